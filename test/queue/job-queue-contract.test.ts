import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { BackoffPolicy, JobQueue } from '../../src/queue/job-queue.ts';
import { PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { waitFor } from '../support/intake-harness.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * The queue port's contract, run against both adapters: waiting jobs collapse per encounter,
 * retryable failures come back after a backoff that honours Retry-After, non-retryable ones and
 * exhausted ones land in the dead-letter list, from which they can be retried; the completed-work
 * ledger answers once a key is recorded.
 */
const policy = { maxAttempts: 3, backoffBaseMs: 50, backoffMaxMs: 200, leaseMs: 1_000 };
const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

/** Storage of the test's own (a file, a database), and a way to open queues on it as replicas would. */
type OpenReplica = () => Promise<JobQueue>;

async function sqliteStorage(queuePolicy: BackoffPolicy = policy): Promise<OpenReplica> {
  const directory = mkdtempSync(path.join(tmpdir(), 'contract-'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  return async () => {
    const queue = new SqliteJobQueue(path.join(directory, 'queue.sqlite'), queuePolicy);
    cleanups.push(() => queue.close());
    return queue;
  };
}

async function postgresStorage(queuePolicy: BackoffPolicy = policy): Promise<OpenReplica> {
  const database = createTestDatabase();
  cleanups.push(() => database.drop());
  return async () => {
    const queue = await PgBossJobQueue.open({
      ...queuePolicy,
      connectionString: database.url,
      superviseIntervalSeconds: 1,
    });
    cleanups.push(() => queue.close());
    return queue;
  };
}

/** The shortest lease each adapter renews: pg-boss heartbeats are 10 s at least. */
const adapters: [string, (queuePolicy?: BackoffPolicy) => Promise<OpenReplica>, boolean, number][] = [
  ['SQLite', sqliteStorage, true, 1_000],
  ['PostgreSQL (pg-boss)', postgresStorage, postgresAvailable, 10_000],
];

for (const [name, storage, available, renewableLeaseMs] of adapters) {
  const open = async () => (await storage())();
  describe.skipIf(!available)(`job queue contract: ${name}`, () => {
    it('collapses waiting duplicates per encounter and kind', async () => {
      const queue = await open();
      expect(
        (
          await queue.enqueue([
            { encounterId: 'e1', source: 'test' },
            { encounterId: 'e1', source: 'test' },
            { encounterId: 'e1', source: 'cds-hooks', kind: 'previsit-briefing' },
          ])
        ).added,
      ).toBe(2);
      const job = await queue.claim('w');
      expect(job?.attempts).toBe(1);
      // Running is not waiting: a new event for it may carry a newer version.
      expect(
        (await queue.enqueue([{ encounterId: job?.encounterId as string, source: 'test', kind: job?.kind }]))
          .added,
      ).toBe(1);
    });

    it('retries with backoff honouring Retry-After, dead-letters the non-retryable, retries from the dead letters', async () => {
      const queue = await open();
      await queue.enqueue([{ encounterId: 'retry-me', source: 'test' }]);
      const first = await queue.claim('w');
      expect(
        await queue.fail(first?.id as string, 'HTTP 429', { retryable: true, retryAfterMs: 1_500 }),
      ).toBe('pending');
      expect(await queue.claim('w')).toBeUndefined(); // the server asked for 1.5 s
      const second = await waitFor(() => queue.claim('w'), 'the retry', 10_000);
      expect(second.id).toBe(first?.id);
      expect(second.attempts).toBe(2);
      expect(await queue.fail(second.id, 'HTTP 422', { retryable: false })).toBe('failed');
      const deadLetters = await queue.list('failed');
      expect(deadLetters.map((job) => job.id)).toEqual([second.id]);
      expect(deadLetters[0].lastError).toContain('422');
      expect(await queue.retry(second.id)).toBe(true);
      expect(await queue.retry('00000000-0000-0000-0000-000000000000')).toBe(false);
      const third = await waitFor(() => queue.claim('w'), 'the job again', 10_000);
      await queue.complete(third.id, 'draft-created');
      const counts = await queue.counts();
      expect(counts.done).toBe(1);
      expect(counts.failed).toBe(0);
    });

    it('moves a job that keeps failing to the dead-letter list after the configured attempts', async () => {
      const queue = await open();
      await queue.enqueue([{ encounterId: 'always-503', source: 'test' }]);
      const statuses: string[] = [];
      for (let attempt = 0; attempt < policy.maxAttempts; attempt++) {
        const job = await waitFor(() => queue.claim('w'), 'a claim', 10_000);
        statuses.push(await queue.fail(job.id, 'HTTP 503', { retryable: true }));
      }
      expect(statuses).toEqual(['pending', 'pending', 'failed']);
      expect((await queue.list('failed')).map((job) => job.encounterId)).toEqual(['always-503']);
    });

    it('hands a job whose lease ran out to another worker', async () => {
      const queue = await open();
      await queue.enqueue([{ encounterId: 'crashed', source: 'test' }]);
      const held = await queue.claim('dead-worker');
      const again = await waitFor(() => queue.claim('live-worker'), 'lease expiry', 15_000);
      expect(again.id).toBe(held?.id);
      expect(again.attempts).toBe(2);
    });

    it(
      'keeps a job whose lease is renewed from a second worker for several leases, and hands it out once renewal stops',
      async () => {
        const queue = await (await storage({ ...policy, leaseMs: renewableLeaseMs }))();
        const renewEvery = queue.leaseRenewalMs as number;
        expect(renewEvery).toBeGreaterThan(0);
        expect(renewEvery).toBeLessThan(renewableLeaseMs);
        await queue.enqueue([{ encounterId: 'long-draft', source: 'test' }]);
        const held = await queue.claim('slow-worker');
        if (!held) throw new Error('no job to hold');
        const renewals: boolean[] = [];
        const renewing = setInterval(() => {
          void queue
            .renewLease(held.id, held.attempts, 'slow-worker')
            .then((renewed) => renewals.push(renewed));
        }, renewEvery);
        try {
          const heldUntil = Date.now() + 3 * renewableLeaseMs;
          while (Date.now() < heldUntil) {
            expect(await queue.claim('second-worker')).toBeUndefined();
            await new Promise((resolve) => setTimeout(resolve, 200));
          }
        } finally {
          clearInterval(renewing);
        }
        expect(renewals.length).toBeGreaterThanOrEqual(5);
        expect(renewals.every((renewed) => renewed)).toBe(true);
        // Another attempt's renewal (a worker that lost the job earlier) extends nothing.
        expect(await queue.renewLease(held.id, held.attempts + 1, 'slow-worker')).toBe(false);

        // The worker stops renewing (it crashed): after one lease the job goes to another worker.
        const again = await waitFor(
          () => queue.claim('second-worker'),
          'lease expiry once renewal stopped',
          2 * renewableLeaseMs + 15_000,
        );
        expect(again.id).toBe(held.id);
        expect(again.attempts).toBe(2);
        // The first worker cannot take it back, the second renews its own attempt.
        expect(await queue.renewLease(held.id, held.attempts, 'slow-worker')).toBe(false);
        expect(await queue.renewLease(again.id, again.attempts, 'second-worker')).toBe(true);
      },
      8 * renewableLeaseMs + 30_000,
    );

    it('runs one job per encounter at a time, whatever its source or kind; other encounters run beside it', async () => {
      const queue = await open();
      await queue.enqueue([{ encounterId: 'busy', source: 'subscription-a' }]);
      const first = await queue.claim('w1');
      expect(first?.encounterId).toBe('busy');
      // The same version delivered by a second subscription, and a CDS Hooks call, while the first job runs.
      const { added } = await queue.enqueue([
        { encounterId: 'busy', source: 'subscription-b' },
        { encounterId: 'busy', source: 'cds-hooks', kind: 'previsit-briefing' },
        { encounterId: 'idle', source: 'subscription-b' },
      ]);
      expect(added).toBe(3);
      const claimed = await Promise.all([queue.claim('w2'), queue.claim('w3'), queue.claim('w4')]);
      expect(claimed.filter((job) => job !== undefined).map((job) => job.encounterId)).toEqual(['idle']);
      // Waiting, not failed and not lost.
      expect(await queue.counts()).toMatchObject({ pending: 2, running: 2, failed: 0 });
      expect(await queue.claim('w2')).toBeUndefined();

      await queue.complete(first?.id as string, 'draft-created');
      const second = await waitFor(() => queue.claim('w2'), 'the second job of the encounter', 10_000);
      expect(second.encounterId).toBe('busy');
      expect(await queue.claim('w3')).toBeUndefined(); // the third waits for the second
      await queue.fail(second.id, 'HTTP 422', { retryable: false });
      const third = await waitFor(() => queue.claim('w3'), 'the third job of the encounter', 10_000);
      expect(third.encounterId).toBe('busy');
      expect(new Set([first?.id, second.id, third.id]).size).toBe(3);
    });

    it('never hands two jobs of one encounter to claims made at the same moment, by several replicas', async () => {
      const openReplica = await storage();
      const replicas: JobQueue[] = [];
      for (let count = 0; count < 3; count++) replicas.push(await openReplica());
      const encounters = Array.from({ length: 8 }, (_, index) => `race-${index}`);
      // Two jobs per encounter that do not collapse (different kinds), so both wait side by side.
      await replicas[0].enqueue(
        encounters.flatMap((encounterId) => [
          { encounterId, source: 'subscription-a' },
          { encounterId, source: 'cds-hooks', kind: 'previsit-briefing' as const },
        ]),
      );
      for (let round = 0; round < 2; round++) {
        const claims = Array.from({ length: encounters.length * 2 }, (_, index) =>
          replicas[index % replicas.length].claim(`worker-${index}`),
        );
        const claimed = (await Promise.all(claims)).filter((job) => job !== undefined);
        expect(claimed.map((job) => job.encounterId).sort(), `round ${round}`).toEqual(
          [...encounters].sort(),
        );
        for (const job of claimed) await replicas[0].complete(job.id, 'draft-created');
      }
      expect(await replicas[0].counts()).toMatchObject({ pending: 0, running: 0, done: 16 });
    });

    it("lets a waiting job of the encounter run once a crashed worker's lease runs out", async () => {
      const queue = await open();
      await queue.enqueue([{ encounterId: 'crashed-busy', source: 'subscription-a' }]);
      await queue.claim('dead-worker');
      await queue.enqueue([{ encounterId: 'crashed-busy', source: 'subscription-b' }]);
      expect(await queue.claim('live-worker')).toBeUndefined(); // the lease still holds
      const next = await waitFor(() => queue.claim('live-worker'), 'lease expiry', 15_000);
      expect(next.encounterId).toBe('crashed-busy');
      // Whichever of the two it was, the other one waits for it.
      expect(await queue.claim('another-worker')).toBeUndefined();
    });

    it('records completed work keys', async () => {
      const queue = await open();
      expect(await queue.hasCompleted('e1|3|progress-summary|v1')).toBe(false);
      await queue.recordCompleted('e1|3|progress-summary|v1', 'draft-created');
      await queue.recordCompleted('e1|3|progress-summary|v1', 'draft-exists');
      expect(await queue.hasCompleted('e1|3|progress-summary|v1')).toBe(true);
      expect(await queue.hasCompleted('e1|4|progress-summary|v1')).toBe(false);
    });
  });
}
