import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { leaseSettings, PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * How the lease maps onto pg-boss: from 10 s up a heartbeat the worker renews, with expireInSeconds as the
 * bound on a job's whole run (queue.maxJobMs); below 10 s (pg-boss refuses shorter heartbeats) the lease is
 * the job's whole run, as before renewals existed. The renewal itself is in the queue contract test.
 */
describe('pg-boss lease settings', () => {
  it('heartbeats from 10 s up, bounded by maxJobMs (2 h unless set, 24 h at most); shorter leases unchanged', () => {
    expect(leaseSettings({ leaseMs: 1_000 })).toEqual({ heartbeatSeconds: null, expireInSeconds: 1 });
    expect(leaseSettings({ leaseMs: 9_000 })).toEqual({ heartbeatSeconds: null, expireInSeconds: 9 });
    expect(leaseSettings({ leaseMs: 300_000 })).toEqual({ heartbeatSeconds: 300, expireInSeconds: 7_200 });
    expect(leaseSettings({ leaseMs: 300_000, maxJobMs: 600_000 })).toEqual({
      heartbeatSeconds: 300,
      expireInSeconds: 600,
    });
    // A bound shorter than the lease would cut every job at the bound: the lease wins.
    expect(leaseSettings({ leaseMs: 300_000, maxJobMs: 60_000 })).toEqual({
      heartbeatSeconds: 300,
      expireInSeconds: 300,
    });
    expect(leaseSettings({ leaseMs: 300_000, maxJobMs: 48 * 3600 * 1000 }).expireInSeconds).toBe(24 * 3600);
  });
});

const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

describe.skipIf(!postgresAvailable)('pg-boss lease on reopening with another leaseMs', () => {
  it('gives waiting jobs the new lease settings, and a lease under 10 s clears the heartbeat', async () => {
    const database = createTestDatabase();
    cleanups.push(() => database.drop());
    const client = new pg.Client({ connectionString: database.url });
    await client.connect();
    cleanups.push(() => client.end());
    const policy = { maxAttempts: 3, backoffBaseMs: 50, backoffMaxMs: 200 };
    const open = async (leaseMs: number, maxJobMs?: number) =>
      PgBossJobQueue.open({
        ...policy,
        leaseMs,
        ...(maxJobMs ? { maxJobMs } : {}),
        connectionString: database.url,
        superviseIntervalSeconds: 1,
      });
    const rows = async () =>
      (
        await client.query(
          `select data->>'encounterId' as encounter, heartbeat_seconds as heartbeat, expire_seconds as expire
             from pgboss.job order by data->>'encounterId'`,
        )
      ).rows;

    const short = await open(1_000);
    expect(short.leaseRenewalMs).toBeUndefined();
    await short.enqueue([{ encounterId: 'queued-before', source: 'test' }]);
    await short.close();
    expect(await rows()).toEqual([{ encounter: 'queued-before', heartbeat: null, expire: 1 }]);

    const long = await open(30_000, 3_600_000);
    expect(long.leaseRenewalMs).toBe(10_000);
    await long.enqueue([{ encounterId: 'queued-after', source: 'test' }]);
    await long.close();
    expect(await rows()).toEqual([
      { encounter: 'queued-after', heartbeat: 30, expire: 3_600 },
      { encounter: 'queued-before', heartbeat: 30, expire: 3_600 },
    ]);

    const shortAgain = await open(2_000);
    await shortAgain.enqueue([{ encounterId: 'queued-last', source: 'test' }]);
    await shortAgain.close();
    expect(await rows()).toEqual([
      { encounter: 'queued-after', heartbeat: null, expire: 2 },
      { encounter: 'queued-before', heartbeat: null, expire: 2 },
      { encounter: 'queued-last', heartbeat: null, expire: 2 },
    ]);
  }, 60_000);
});
