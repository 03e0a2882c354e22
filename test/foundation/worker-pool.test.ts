import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.ts';
import { WorkerPool } from '../../src/pipeline/worker-pool.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';

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
});
