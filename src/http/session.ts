import { createHash, randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { SessionCookieConfig } from '../config/auth-config.ts';

/**
 * Server-side sessions for the review app. The browser holds only an opaque random id in a cookie; tokens and
 * launch context stay here. Defaults fit an EHR iframe (`SameSite=None; Secure; Partitioned`); local development
 * over plain http sets `auth.launch.cookie.secure: false` and `sameSite: lax`.
 */
export interface SessionStore<T> {
  get(id: string): Promise<T | undefined>;
  set(id: string, value: T, ttlSeconds: number): Promise<void>;
  delete(id: string): Promise<void>;
}

/**
 * One process's sessions in memory, with expiry and a size cap (oldest dropped first) so unauthenticated launch
 * attempts cannot grow it without bound. Several replicas need a shared store behind the same interface.
 */
export class MemorySessionStore<T> implements SessionStore<T> {
  readonly #entries = new Map<string, { value: T; expiresAt: number }>();
  readonly #maxEntries: number;
  readonly #now: () => number;

  constructor(options: { maxEntries?: number; now?: () => number } = {}) {
    this.#maxEntries = options.maxEntries ?? 10_000;
    this.#now = options.now ?? Date.now;
  }

  get size(): number {
    return this.#entries.size;
  }

  async get(id: string): Promise<T | undefined> {
    const entry = this.#entries.get(id);
    if (!entry) return undefined;
    if (entry.expiresAt <= this.#now()) {
      this.#entries.delete(id);
      return undefined;
    }
    return structuredClone(entry.value);
  }

  async set(id: string, value: T, ttlSeconds: number): Promise<void> {
    // Re-inserting moves the entry to the end, so Map order is least recently written first.
    this.#entries.delete(id);
    this.#entries.set(id, { value: structuredClone(value), expiresAt: this.#now() + ttlSeconds * 1000 });
    if (this.#entries.size > this.#maxEntries) this.#sweep();
  }

  async delete(id: string): Promise<void> {
    this.#entries.delete(id);
  }

  #sweep(): void {
    const now = this.#now();
    for (const [id, entry] of this.#entries) if (entry.expiresAt <= now) this.#entries.delete(id);
    for (const id of this.#entries.keys()) {
      if (this.#entries.size <= this.#maxEntries) break;
      this.#entries.delete(id);
    }
  }
}

export interface SessionManager<T> {
  readonly cookieName: string;
  /** The session the request's cookie names, if it exists and has not expired. */
  load(request: IncomingMessage): Promise<{ id: string; data: T } | undefined>;
  /** The session with this id (for work that outlives the request that started it). */
  loadById(id: string): Promise<{ id: string; data: T } | undefined>;
  /** Saves under the given id, or a new one (then sets the cookie). Returns the id. */
  save(response: ServerResponse, id: string | undefined, data: T, ttlSeconds: number): Promise<string>;
  /** Saves under an existing id without touching the cookie (background changes such as a token refresh). */
  update(id: string, data: T, ttlSeconds: number): Promise<void>;
  /** A new id for the same data (after login, against session fixation); the old id stops working. */
  rotate(response: ServerResponse, oldId: string, data: T, ttlSeconds: number): Promise<string>;
  destroy(response: ServerResponse, id: string): Promise<void>;
}

const sessionIdPattern = /^[A-Za-z0-9_-]{43}$/;

export function defaultCookieName(cookie: SessionCookieConfig): string {
  // __Host- makes the browser refuse the cookie unless Secure, Path=/ and host-only: no subdomain can plant one.
  return cookie.name ?? (cookie.secure ? '__Host-ehr-draft-session' : 'ehr-draft-session');
}

export function readCookie(request: IncomingMessage, name: string): string | undefined {
  const header = request.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const separator = part.indexOf('=');
    if (separator < 0) continue;
    if (part.slice(0, separator).trim() === name) return part.slice(separator + 1).trim();
  }
  return undefined;
}

export function serializeSessionCookie(
  name: string,
  value: string,
  cookie: SessionCookieConfig,
  maxAgeSeconds: number,
): string {
  const attributes = [`${name}=${value}`, 'Path=/', 'HttpOnly', `Max-Age=${maxAgeSeconds}`];
  attributes.push(
    `SameSite=${cookie.sameSite === 'none' ? 'None' : cookie.sameSite === 'lax' ? 'Lax' : 'Strict'}`,
  );
  if (cookie.secure) attributes.push('Secure');
  if (cookie.secure && cookie.partitioned) attributes.push('Partitioned');
  return attributes.join('; ');
}

function appendSetCookie(response: ServerResponse, value: string): void {
  const existing = response.getHeader('set-cookie');
  const list = existing === undefined ? [] : Array.isArray(existing) ? existing : [String(existing)];
  response.setHeader('set-cookie', [
    ...list.filter((entry) => !entry.startsWith(`${value.split('=')[0]}=`)),
    value,
  ]);
}

/** The store never sees the cookie value itself: a leaked store dump cannot be replayed as a cookie. */
const storeKey = (id: string) => createHash('sha256').update(id).digest('base64url');

export function createSessionManager<T>(options: {
  store: SessionStore<T>;
  cookie: SessionCookieConfig;
}): SessionManager<T> {
  const cookieName = defaultCookieName(options.cookie);
  const setCookie = (response: ServerResponse, id: string, ttlSeconds: number) =>
    appendSetCookie(response, serializeSessionCookie(cookieName, id, options.cookie, ttlSeconds));

  return {
    cookieName,
    async load(request) {
      const id = readCookie(request, cookieName);
      if (!id || !sessionIdPattern.test(id)) return undefined;
      const data = await options.store.get(storeKey(id));
      return data === undefined ? undefined : { id, data };
    },
    async loadById(id) {
      const data = await options.store.get(storeKey(id));
      return data === undefined ? undefined : { id, data };
    },
    async save(response, id, data, ttlSeconds) {
      const sessionId = id ?? randomBytes(32).toString('base64url');
      await options.store.set(storeKey(sessionId), data, ttlSeconds);
      setCookie(response, sessionId, ttlSeconds);
      return sessionId;
    },
    async update(id, data, ttlSeconds) {
      await options.store.set(storeKey(id), data, ttlSeconds);
    },
    async rotate(response, oldId, data, ttlSeconds) {
      await options.store.delete(storeKey(oldId));
      const sessionId = randomBytes(32).toString('base64url');
      await options.store.set(storeKey(sessionId), data, ttlSeconds);
      setCookie(response, sessionId, ttlSeconds);
      return sessionId;
    },
    async destroy(response, id) {
      await options.store.delete(storeKey(id));
      appendSetCookie(response, serializeSessionCookie(cookieName, '', options.cookie, 0));
    },
  };
}
