import type { Adapter, AdapterPayload } from 'oidc-provider';

/**
 * Storage for oidc-provider's state (sessions, interactions, codes, tokens, grants, seen assertion `jti`s) in
 * process memory, as the sandbox loses everything on restart anyway. Written here rather than using the library's
 * development adapter because that one is an LRU of 1000 entries: under load it would forget a client
 * assertion's `jti` before its expiry, and a replayed assertion would then be accepted.
 * Clients are not stored here: `Client` lookups go to the sandbox's client registry.
 */
interface Entry {
  payload: AdapterPayload;
  /** Milliseconds since the epoch; Infinity when the model has no expiry. */
  expiresAt: number;
}

export function createMemoryStorage(options: {
  findClient: (clientId: string) => AdapterPayload | undefined;
  now?: () => number;
}): (model: string) => Adapter {
  const now = options.now ?? Date.now;
  const entries = new Map<string, Entry>();
  const sessionKeysByUid = new Map<string, string>();
  const keysByGrant = new Map<string, Set<string>>();
  let writesSinceSweep = 0;

  function live(key: string): Entry | undefined {
    const entry = entries.get(key);
    if (!entry) return undefined;
    if (entry.expiresAt <= now()) {
      remove(key);
      return undefined;
    }
    return entry;
  }

  function remove(key: string): void {
    const entry = entries.get(key);
    entries.delete(key);
    if (!entry) return;
    const { uid, grantId } = entry.payload;
    if (typeof uid === 'string' && sessionKeysByUid.get(uid) === key) sessionKeysByUid.delete(uid);
    if (typeof grantId === 'string') keysByGrant.get(grantId)?.delete(key);
  }

  function sweep(): void {
    const current = now();
    for (const [key, entry] of entries) if (entry.expiresAt <= current) remove(key);
    for (const [grantId, keys] of keysByGrant) if (keys.size === 0) keysByGrant.delete(grantId);
  }

  return (model: string): Adapter => {
    const keyFor = (id: string) => `${model}:${id}`;
    return {
      async upsert(id, payload, expiresIn) {
        const key = keyFor(id);
        remove(key);
        entries.set(key, {
          payload,
          expiresAt: typeof expiresIn === 'number' ? now() + expiresIn * 1000 : Number.POSITIVE_INFINITY,
        });
        if (model === 'Session' && typeof payload.uid === 'string') sessionKeysByUid.set(payload.uid, key);
        if (typeof payload.grantId === 'string') {
          const keys = keysByGrant.get(payload.grantId) ?? new Set<string>();
          keys.add(key);
          keysByGrant.set(payload.grantId, keys);
        }
        if (++writesSinceSweep >= 500) {
          writesSinceSweep = 0;
          sweep();
        }
      },
      async find(id) {
        if (model === 'Client') return options.findClient(id);
        return live(keyFor(id))?.payload;
      },
      async findByUid(uid) {
        const key = sessionKeysByUid.get(uid);
        return key ? live(key)?.payload : undefined;
      },
      async findByUserCode() {
        return undefined;
      },
      async consume(id) {
        const entry = live(keyFor(id));
        if (entry) entry.payload.consumed = Math.floor(now() / 1000);
      },
      async destroy(id) {
        remove(keyFor(id));
      },
      async revokeByGrantId(grantId) {
        for (const key of keysByGrant.get(grantId) ?? []) remove(key);
        keysByGrant.delete(grantId);
      },
    };
  };
}
