import type { IntakeStateStore } from './intake-state-store.ts';

/**
 * A token bucket per client address, for floods of unauthenticated or empty-payload notifications.
 * In memory and per process: a flood is a local problem, and a restart forgives everyone. The map is
 * bounded so a spray of addresses cannot grow it without limit.
 */
export class RateLimiter {
  readonly #perMinute: number;
  readonly #buckets = new Map<string, { tokens: number; refilledAt: number }>();
  readonly #now: () => number;
  readonly #maxKeys: number;

  constructor(perMinute: number, options: { now?: () => number; maxKeys?: number } = {}) {
    this.#perMinute = perMinute;
    this.#now = options.now ?? Date.now;
    this.#maxKeys = options.maxKeys ?? 10_000;
  }

  #bucket(key: string) {
    const now = this.#now();
    let bucket = this.#buckets.get(key);
    if (!bucket) {
      if (this.#buckets.size >= this.#maxKeys) {
        const oldest = this.#buckets.keys().next().value;
        if (oldest !== undefined) this.#buckets.delete(oldest);
      }
      bucket = { tokens: this.#perMinute, refilledAt: now };
      this.#buckets.set(key, bucket);
    }
    const refill = ((now - bucket.refilledAt) / 60_000) * this.#perMinute;
    bucket.tokens = Math.min(this.#perMinute, bucket.tokens + refill);
    bucket.refilledAt = now;
    return bucket;
  }

  /** Whether the key still has a token, without spending one. */
  allows(key: string): boolean {
    return this.#bucket(key).tokens >= 1;
  }

  /** Spends a token; false when none is left. */
  take(key: string): boolean {
    const bucket = this.#bucket(key);
    if (bucket.tokens < 1) return false;
    bucket.tokens -= 1;
    return true;
  }

  /** Seconds until the key has a token again. */
  retryAfterSeconds(key: string): number {
    const bucket = this.#bucket(key);
    return Math.max(1, Math.ceil(((1 - bucket.tokens) / this.#perMinute) * 60));
  }
}

/** One client's token spent from a limit, wherever the limit's buckets are kept. */
export interface ClientRateLimit {
  take(client: string): Promise<{ allowed: boolean; retryAfterSeconds: number }>;
}

/** This process's buckets (one replica: a flood is a local problem, and a restart forgives everyone). */
export function processRateLimit(perMinute: number): ClientRateLimit {
  const limiter = new RateLimiter(perMinute);
  return {
    async take(client) {
      const allowed = limiter.take(client);
      return { allowed, retryAfterSeconds: allowed ? 0 : limiter.retryAfterSeconds(client) };
    },
  };
}

/**
 * Buckets in the shared database: behind a load balancer a flood spread over the replicas spends one
 * budget per client, not one per replica.
 */
export function sharedRateLimit(
  store: { takeToken: IntakeStateStore['takeToken'] },
  name: string,
  perMinute: number,
  now: () => number = Date.now,
): ClientRateLimit {
  return { take: (client) => store.takeToken(name, client, perMinute, now()) };
}
