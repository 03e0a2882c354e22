import { mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import type { StoredDraft } from '../../fhir/draft-store.ts';
import { ensurePrivateDirectory } from '../../src/drafts/private-files.ts';
import { purgeExpired, schedulePurge } from '../../src/drafts/purge-schedule.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { silentLogger } from '../../src/log.ts';

const directories: string[] = [];
const stores: SqliteDraftStore[] = [];
afterEach(async () => {
  await Promise.all(stores.splice(0).map((store) => store.close()));
  for (const directory of directories.splice(0)) rmSync(directory, { recursive: true, force: true });
});

function freshDirectory(): string {
  const directory = mkdtempSync(path.join(tmpdir(), 'draft-store-'));
  directories.push(directory);
  return directory;
}

function openStore(file: string): SqliteDraftStore {
  const store = new SqliteDraftStore(file);
  stores.push(store);
  return store;
}

function draft(id: string, updatedAt: string, patientId = 'p1'): StoredDraft {
  return {
    id,
    mode: 'hold',
    identifierValue: `e-${id}:progress-summary:extractive-1`,
    patientId,
    encounterId: `e-${id}`,
    kind: 'progress-summary',
    status: 'preliminary',
    title: 'Draft',
    text: 'text',
    citations: [],
    flagged: false,
    document: { resourceType: 'DocumentReference', id, status: 'current', content: [] },
    provenance: { resourceType: 'Provenance', target: [], recorded: updatedAt, agent: [] },
    device: { resourceType: 'Device' },
    events: [],
    createdAt: updatedAt,
    updatedAt,
  };
}

const mode = (file: string) => statSync(file).mode & 0o777;

describe('the service draft store', () => {
  it('keeps its data directory private (0700) and its database files 0600, -wal included', async () => {
    const directory = path.join(freshDirectory(), 'data');
    mkdirSync(directory, { mode: 0o755 });
    ensurePrivateDirectory(directory);
    expect(mode(directory)).toBe(0o700);
    const file = path.join(directory, 'drafts.sqlite');
    const store = openStore(file);
    await store.insert(draft('d1', new Date().toISOString()));
    expect(mode(file)).toBe(0o600);
    expect(mode(`${file}-wal`)).toBe(0o600);
  });

  it('refuses to overwrite a change made by someone else (optimistic check)', async () => {
    const store = openStore(path.join(freshDirectory(), 'drafts.sqlite'));
    const original = draft('d1', '2026-11-01T00:00:00.000Z');
    await store.insert(original);
    expect(
      await store.replace(
        { ...original, text: 'first', updatedAt: '2026-11-01T00:00:01.000Z' },
        original.updatedAt,
      ),
    ).toBe(true);
    expect(
      await store.replace(
        { ...original, text: 'second', updatedAt: '2026-11-01T00:00:02.000Z' },
        original.updatedAt,
      ),
    ).toBe(false);
    expect((await store.get('d1'))?.text).toBe('first');
    expect((await store.listByPatient('p1')).map((stored) => stored.id)).toEqual(['d1']);
    expect(await store.listByPatient('p2')).toEqual([]);
  });

  it('tracks regeneration requests and generations', async () => {
    const store = openStore(path.join(freshDirectory(), 'drafts.sqlite'));
    expect(await store.generation('e1', 'progress-summary')).toBe(0);
    await store.requestRegeneration({
      encounterId: 'e1',
      kind: 'progress-summary',
      replaces: { mode: 'write', id: 'old' },
      requestedAt: new Date().toISOString(),
    });
    expect(await store.pendingRegeneration('e1', 'progress-summary')).toMatchObject({
      replaces: { id: 'old' },
    });
    await store.completeRegeneration('e1', 'progress-summary', 1);
    expect(await store.pendingRegeneration('e1', 'progress-summary')).toBeUndefined();
    expect(await store.generation('e1', 'progress-summary')).toBe(1);
  });
});

describe('the scheduled purge', () => {
  it('removes stored drafts and finished jobs older than the retention, and keeps the rest', async () => {
    const store = openStore(path.join(freshDirectory(), 'drafts.sqlite'));
    const now = new Date('2026-11-27T12:00:00Z');
    await store.insert(draft('old', '2026-10-01T00:00:00.000Z'));
    await store.insert(draft('recent', '2026-11-20T00:00:00.000Z'));
    const jobCutoffs: Date[] = [];
    const result = await purgeExpired(
      {
        drafts: store,
        finishedJobs: async (before) => {
          jobCutoffs.push(before);
          return 4;
        },
      },
      30,
      now,
    );
    expect(result).toEqual({ cutoff: '2026-10-28T12:00:00.000Z', drafts: 1, jobs: 4 });
    expect(jobCutoffs).toEqual([new Date('2026-10-28T12:00:00.000Z')]);
    expect(await store.get('old')).toBeUndefined();
    expect(await store.get('recent')).toBeDefined();
    expect(await store.count()).toBe(1);
  });

  it('runs on a node-cron schedule, refuses a malformed one, and can run at once', async () => {
    const store = openStore(path.join(freshDirectory(), 'drafts.sqlite'));
    await store.insert(draft('old', '2020-01-01T00:00:00.000Z'));
    expect(() =>
      schedulePurge({
        targets: { drafts: store },
        retentionDays: 1,
        schedule: 'every night',
        logger: silentLogger(),
      }),
    ).toThrow(/cron/);
    const schedule = schedulePurge({
      targets: { drafts: store },
      retentionDays: 1,
      schedule: '17 3 * * *',
      logger: silentLogger(),
    });
    try {
      expect((await schedule.runNow()).drafts).toBe(1);
      expect(await store.count()).toBe(0);
    } finally {
      await schedule.stop();
    }
  });
});
