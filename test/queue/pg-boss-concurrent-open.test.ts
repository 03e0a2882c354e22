import { afterEach, describe, expect, it } from 'vitest';
import { PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * Replicas of a new deployment start at the same moment on an empty database (docker-compose up,
 * a Kubernetes rollout): each opens the queue and creates its tables. A `create table if not exists`
 * run by two at once can fail on PostgreSQL's catalog ("duplicate key value violates unique constraint
 * pg_type_typname_nsp_index"); the replica must not crash for it.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const policy = { maxAttempts: 3, backoffBaseMs: 1000, backoffMaxMs: 5000, leaseMs: 60_000 };

describe.skipIf(!postgresAvailable)('PostgreSQL queue opened by several replicas at once', () => {
  it('opens on a fresh database from three replicas at the same moment, every time', async () => {
    for (let round = 0; round < 4; round++) {
      const database = createTestDatabase();
      cleanups.push(() => database.drop());
      const opened = await Promise.allSettled(
        [0, 1, 2].map(() =>
          PgBossJobQueue.open({ ...policy, connectionString: database.url, superviseIntervalSeconds: 1 }),
        ),
      );
      for (const result of opened)
        if (result.status === 'fulfilled') cleanups.push(() => result.value.close());
      const failures = opened.flatMap((result) =>
        result.status === 'rejected' ? [String(result.reason)] : [],
      );
      expect(failures, `round ${round}`).toEqual([]);
      // The replicas share one queue and one completed-work ledger.
      const [first, second] = opened.map(
        (result) => (result as PromiseFulfilledResult<PgBossJobQueue>).value,
      );
      await first.recordCompleted('enc-1|1|progress-summary|v1', 'draft-created');
      expect(await second.hasCompleted('enc-1|1|progress-summary|v1')).toBe(true);
    }
  }, 120_000);
});
