import { describe, expect, it } from 'vitest';
import { MemorySessionStore, type SessionStore } from '../../src/http/session.ts';
import { SqliteSessionStore } from '../../src/http/sqlite-session-store.ts';

describe.each([
  ['memory', (now: () => number) => new MemorySessionStore<{ n: number }>({ now, maxEntries: 3 })],
  ['sqlite', (now: () => number) => new SqliteSessionStore<{ n: number }>(':memory:', { now })],
])('%s session store', (_name, create) => {
  it('returns copies, expires entries and deletes them', async () => {
    let clock = 1_000_000;
    const store: SessionStore<{ n: number }> = create(() => clock);
    const value = { n: 1 };
    await store.set('a', value, 60);
    value.n = 2;
    expect(await store.get('a')).toEqual({ n: 1 });
    clock += 59_000;
    expect(await store.get('a')).toEqual({ n: 1 });
    clock += 1_000;
    expect(await store.get('a')).toBeUndefined();
    await store.set('b', { n: 3 }, 60);
    await store.delete('b');
    expect(await store.get('b')).toBeUndefined();
  });
});

describe('memory session store', () => {
  it('drops the least recently written entries beyond its cap', async () => {
    const store = new MemorySessionStore<number>({ maxEntries: 3 });
    for (const key of ['a', 'b', 'c']) await store.set(key, 1, 60);
    await store.set('a', 2, 60);
    await store.set('d', 1, 60);
    expect(store.size).toBe(3);
    expect(await store.get('b')).toBeUndefined();
    expect(await store.get('a')).toBe(2);
  });
});
