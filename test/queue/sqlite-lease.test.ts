import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { afterAll, describe, expect, it } from 'vitest';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';

/**
 * The SQLite lease on a clock of the test's own: renewed only for the attempt the worker holds, and not past
 * maxJobMs after the claim (a run that hangs while its worker lives loses its job after one more lease, as a
 * pg-boss job does at expireInSeconds). Renewal across real time is in the queue contract test.
 */
const policy = {
  maxAttempts: 3,
  backoffBaseMs: 1_000,
  backoffMaxMs: 60_000,
  leaseMs: 30_000,
  maxJobMs: 120_000,
};
const directories: string[] = [];
afterAll(() => {
  for (const directory of directories) rmSync(directory, { recursive: true, force: true });
});

function queueWithClock() {
  let now = Date.parse('2026-12-07T10:00:00Z');
  const directory = mkdtempSync(path.join(tmpdir(), 'sqlite-lease-'));
  directories.push(directory);
  const file = path.join(directory, 'queue.sqlite');
  const queue = new SqliteJobQueue(file, policy, () => now);
  return { queue, file, advance: (milliseconds: number) => (now += milliseconds) };
}

describe('SQLite job queue lease', () => {
  it('renews for the holding worker and attempt only, until maxJobMs after the claim', async () => {
    const { queue, advance } = queueWithClock();
    expect(queue.leaseRenewalMs).toBe(10_000);
    await queue.enqueue([{ encounterId: 'slow', source: 'test' }]);
    const held = await queue.claim('worker-a');
    if (!held) throw new Error('no job');
    expect(await queue.renewLease(held.id, held.attempts, 'worker-b')).toBe(false);
    expect(await queue.renewLease(held.id, held.attempts + 1, 'worker-a')).toBe(false);
    // Renewed every 20 s, the job outlives its 30 s lease three times over.
    for (let elapsed = 20_000; elapsed <= 100_000; elapsed += 20_000) {
      advance(20_000);
      expect(await queue.renewLease(held.id, held.attempts, 'worker-a'), `at ${elapsed} ms`).toBe(true);
      expect(await queue.claim('worker-b')).toBeUndefined();
    }
    advance(20_000); // 120 s after the claim: maxJobMs
    expect(await queue.renewLease(held.id, held.attempts, 'worker-a')).toBe(false);
    expect(await queue.claim('worker-b')).toBeUndefined(); // the last renewal still holds
    advance(10_001);
    const again = await queue.claim('worker-b');
    expect(again).toMatchObject({ id: held.id, attempts: 2 });
    expect(await queue.renewLease(held.id, held.attempts, 'worker-a')).toBe(false);
    expect(await queue.renewLease(held.id, 2, 'worker-b')).toBe(true);
    await queue.close();
  });

  it('renews a lease that ran out unclaimed, not one whose encounter was handed out again', async () => {
    const { queue, advance } = queueWithClock();
    await queue.enqueue([{ encounterId: 'busy', source: 'subscription-a' }]);
    const first = await queue.claim('worker-a');
    if (!first) throw new Error('no job');
    advance(31_000); // the renewal came late, nobody took the job
    expect(await queue.renewLease(first.id, first.attempts, 'worker-a')).toBe(true);
    expect(await queue.claim('worker-b')).toBeUndefined();

    await queue.enqueue([{ encounterId: 'busy', source: 'cds-hooks', kind: 'previsit-briefing' }]);
    advance(31_000); // late again, and this time another worker takes the encounter's work
    const second = await queue.claim('worker-b');
    expect(second?.encounterId).toBe('busy');
    expect(await queue.renewLease(first.id, first.attempts, 'worker-a')).toBe(false);
    await queue.close();
  });

  it('adds the claim time to a queue file made before leases were renewed', async () => {
    const directory = mkdtempSync(path.join(tmpdir(), 'sqlite-lease-'));
    directories.push(directory);
    const file = path.join(directory, 'queue.sqlite');
    const older = new DatabaseSync(file);
    older.exec(`create table jobs (id text primary key, encounter_id text not null, source text not null,
      version_id text, kind text, status text not null, attempts integer not null default 0,
      created_at integer not null, run_at integer not null, lease_until integer, worker_id text,
      last_error text, outcome text, finished_at integer)`);
    older.close();
    const queue = new SqliteJobQueue(file, policy);
    await queue.enqueue([{ encounterId: 'upgraded', source: 'test' }]);
    const job = await queue.claim('worker-a');
    expect(await queue.renewLease(job?.id as string, 1, 'worker-a')).toBe(true);
    await queue.close();
  });
});
