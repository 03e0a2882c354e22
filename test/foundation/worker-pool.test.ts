import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.ts';
import { WorkerPool } from '../../src/pipeline/worker-pool.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { waitFor } from '../support/intake-harness.ts';

const policy = { maxAttempts: 3, backoffBaseMs: 10, backoffMaxMs: 100, leaseMs: 60_000 };
const newQueue = () =>
  new SqliteJobQueue(path.join(mkdtempSync(path.join(tmpdir(), 'pool-test-')), 'queue.sqlite'), policy);

describe('worker pool', () => {
  it('wakes every idle worker when jobs are queued, without waiting for the next poll', async () => {
    const queue = newQueue();
    const started: string[] = [];
    let release: () => void = () => {};
    const blocked = new Promise<void>((resolve) => {
      release = resolve;
    });
    const pool = new WorkerPool({
      queue,
      concurrency: 2,
      pollIntervalMs: 60_000, // a poll would never come within the test
      logger: silentLogger(),
      process: async (job) => {
        started.push(job.encounterId);
        await blocked;
        return 'done';
      },
    });
    pool.start();
    await new Promise((resolve) => setTimeout(resolve, 50)); // both workers idle
    await queue.enqueue([
      { encounterId: 'e1', source: 'test' },
      { encounterId: 'e2', source: 'test' },
    ]);
    pool.nudge();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(started.sort()).toEqual(['e1', 'e2']);
    release();
    await pool.stop(1_000);
    expect((await queue.counts()).done).toBe(2);
    await queue.close();
  });

  it('hands a job that outlives the grace period back to the queue and does not wait for it', async () => {
    const queue = newQueue();
    const pool = new WorkerPool({
      queue,
      concurrency: 1,
      pollIntervalMs: 10,
      logger: silentLogger(),
      process: () => new Promise<string>(() => {}), // a step that ignores the abort signal
    });
    await queue.enqueue([{ encounterId: 'stuck', source: 'test' }]);
    pool.start();
    await new Promise((resolve) => setTimeout(resolve, 100));
    expect(pool.inFlight).toBe(1);
    await pool.stop(50);
    expect(await queue.counts()).toMatchObject({ pending: 1, running: 0 });
    const [job] = await queue.list('pending');
    expect(job).toMatchObject({ encounterId: 'stuck', attempts: 0 });
    await queue.close();
  });

  it('renews the lease of a job that runs for several leases, so no other worker is handed it', async () => {
    const leaseMs = 300;
    const queue = new SqliteJobQueue(
      path.join(mkdtempSync(path.join(tmpdir(), 'pool-test-')), 'queue.sqlite'),
      {
        ...policy,
        leaseMs,
      },
    );
    let finish: (outcome: string) => void = () => {};
    const pool = new WorkerPool({
      queue,
      concurrency: 1,
      pollIntervalMs: 10,
      logger: silentLogger(),
      process: () =>
        new Promise<string>((resolve) => {
          finish = resolve;
        }),
    });
    await queue.enqueue([{ encounterId: 'slow-model', source: 'test' }]);
    pool.start();
    await waitFor(async () => pool.inFlight === 1, 'the pool to take the job', 2_000);
    // Another replica asks for work all along: six leases pass while the job runs.
    const heldUntil = Date.now() + 6 * leaseMs;
    while (Date.now() < heldUntil) {
      expect(await queue.claim('another-replica')).toBeUndefined();
      await new Promise((resolve) => setTimeout(resolve, 25));
    }
    finish('draft-created');
    await pool.stop(1_000);
    const [job] = await queue.list('done');
    expect(job).toMatchObject({ encounterId: 'slow-model', attempts: 1, outcome: 'draft-created' });
    await queue.close();
  });

  it('abandons a run whose lease was lost to another worker, leaving the outcome to that worker', async () => {
    const leaseMs = 300;
    let now = Date.now();
    const queue = new SqliteJobQueue(
      path.join(mkdtempSync(path.join(tmpdir(), 'pool-test-')), 'queue.sqlite'),
      { ...policy, leaseMs },
      () => now,
    );
    let aborted = false;
    const pool = new WorkerPool({
      queue,
      concurrency: 1,
      pollIntervalMs: 10,
      logger: silentLogger(),
      process: (_job, signal) =>
        new Promise<string>((resolve) => {
          signal.addEventListener('abort', () => {
            aborted = true;
            resolve('draft-created'); // a step that finished anyway: its outcome is not recorded
          });
        }),
    });
    await queue.enqueue([{ encounterId: 'stalled', source: 'test' }]);
    pool.start();
    await waitFor(async () => pool.inFlight === 1, 'the pool to take the job', 2_000);
    // The pool's renewals were held up (an event loop blocked past the lease), and another replica took the job.
    now += 2 * leaseMs;
    const taken = await queue.claim('another-replica');
    expect(taken?.attempts).toBe(2);
    await waitFor(async () => aborted, 'the run to be aborted', 2_000);
    await waitFor(async () => pool.inFlight === 0, 'the run to end', 2_000);
    expect(await queue.counts()).toMatchObject({ running: 1, done: 0 });
    await queue.complete(taken?.id as string, 'draft-exists');
    await pool.stop(1_000);
    expect((await queue.list('done'))[0]).toMatchObject({ attempts: 2, outcome: 'draft-exists' });
    await queue.close();
  });
});
