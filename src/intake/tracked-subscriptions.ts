import { relativeReference } from '../../fhir/subscription-notification.ts';

/**
 * Which subscriptions intake keeps event counters for: the one the service ensured on its FHIR server
 * and the ones configuration lists. A notification naming any other subscription is still worked (it
 * was authenticated, and a notification is only a hint) but leaves no intake state behind, so a
 * misbehaving or hostile sender cannot grow intake.sqlite with made-up subscription names. Each
 * tracked subscription is stored under one name however a notification spells it.
 */
interface TrackedEntry {
  /** The name its state is stored under. */
  key: string;
  /** `Subscription/<id>`, when the entry is a reference. */
  reference: string | undefined;
  /** Set for an absolute URL: notifications must name the same server. */
  origin: string | undefined;
}

function originOf(value: string): string | undefined {
  if (!/^https?:\/\//i.test(value)) return undefined;
  try {
    return new URL(value).origin;
  } catch {
    return undefined;
  }
}

function entryFor(configured: string): TrackedEntry {
  const trimmed = configured.trim();
  // A bare id names a Subscription on the service's own FHIR server.
  const named = /^[A-Za-z0-9\-.]{1,64}$/.test(trimmed) ? `Subscription/${trimmed}` : trimmed;
  const reference = relativeReference(named);
  const origin = originOf(named);
  return {
    key: reference && !origin ? reference : named,
    reference: reference?.startsWith('Subscription/') ? reference : undefined,
    origin,
  };
}

export class TrackedSubscriptions {
  readonly #configured: TrackedEntry[];
  #own: TrackedEntry | undefined;

  /**
   * @param configured subscriptions made outside the service: ids, `Subscription/<id>` or absolute URLs
   * @param own the reference of the Subscription the service ensured, when known
   */
  constructor(configured: string[], own?: string) {
    this.#configured = configured.map(entryFor);
    if (own) this.#own = entryFor(own);
  }

  /** Records the Subscription the service ensured; returns the name the one it replaces was stored under. */
  setOwn(reference: string): string | undefined {
    const previous = this.#own?.key;
    this.#own = entryFor(reference);
    return previous !== this.#own.key ? previous : undefined;
  }

  /** The names tracked state may be stored under. */
  keys(): string[] {
    return [...(this.#own ? [this.#own.key] : []), ...this.#configured.map((entry) => entry.key)];
  }

  /** The name a notification's subscription is tracked under, or undefined when it is not tracked. */
  keyFor(subscription: string): string | undefined {
    const trimmed = subscription.trim();
    const reference = relativeReference(trimmed);
    const origin = originOf(trimmed);
    for (const entry of [...(this.#own ? [this.#own] : []), ...this.#configured]) {
      if (entry.key === trimmed) return entry.key;
      if (!reference || entry.reference !== reference) continue;
      // A relative entry names the service's own server, however the sender spells the base.
      if (entry.origin === undefined || entry.origin === origin) return entry.key;
    }
    return undefined;
  }
}
