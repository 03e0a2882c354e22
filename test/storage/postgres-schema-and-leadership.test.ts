import pg from 'pg';
import { afterAll, describe, expect, it } from 'vitest';
import { AdvisoryLockLeadership } from '../../src/storage/leadership.ts';
import { migrations } from '../../src/storage/migrations.ts';
import { PostgresDatabase } from '../../src/storage/postgres-database.ts';
import { waitFor } from '../support/intake-harness.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * The shared database's own machinery: versioned migrations applied once however many replicas start
 * together, a database from a newer release refused, and one leader for scheduled work that another
 * replica replaces when the leader's connection dies.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

function freshDatabase(): string {
  const database = createTestDatabase();
  cleanups.push(() => database.drop());
  return database.url;
}

async function query<Row extends pg.QueryResultRow>(url: string, sql: string): Promise<Row[]> {
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    return (await client.query<Row>(sql)).rows;
  } finally {
    await client.end();
  }
}

describe.skipIf(!postgresAvailable)('PostgreSQL schema and leadership', () => {
  it('three replicas starting at once apply each migration exactly once', async () => {
    const url = freshDatabase();
    const opened = await Promise.all(
      [1, 2, 3].map(() => PostgresDatabase.open({ connectionString: url, maxConnections: 2 })),
    );
    for (const database of opened) cleanups.push(() => database.close());
    const rows = await query<{ version: number; name: string }>(
      url,
      'select version, name from ehr_agent.schema_migrations order by version',
    );
    expect(rows).toEqual(migrations.map(({ version, name }) => ({ version, name })));
    // Every store's tables are there, in the service's own schema.
    const tables = await query<{ table_name: string }>(
      url,
      "select table_name from information_schema.tables where table_schema = 'ehr_agent'",
    );
    expect(tables.map((row) => row.table_name)).toEqual(
      expect.arrayContaining([
        'drafts',
        'smart_sessions',
        'subscription_state',
        'poll_cursor',
        'nudge_delivery',
      ]),
    );
  });

  it('applies a later migration once, refuses a failing one whole, and refuses a database from a newer release', async () => {
    const url = freshDatabase();
    const first = await PostgresDatabase.open({ connectionString: url });
    await first.close();
    const latest = Math.max(...migrations.map((migration) => migration.version));
    const next = [
      ...migrations,
      { version: latest + 1, name: 'add-column', sql: 'alter table drafts add column note text' },
    ];
    const second = await PostgresDatabase.open({ connectionString: url }, next);
    await second.run('update drafts set note = ?', ['column exists']);
    await second.close();

    const broken = [
      ...next,
      { version: latest + 2, name: 'broken', sql: 'create table kept (id int); select no_such_function()' },
    ];
    await expect(PostgresDatabase.open({ connectionString: url }, broken)).rejects.toThrow(
      `migration ${latest + 2} (broken) failed`,
    );
    // The failed migration left nothing behind: neither its table nor its version.
    expect(await query(url, "select 1 from information_schema.tables where table_name = 'kept'")).toEqual([]);

    await expect(PostgresDatabase.open({ connectionString: url }, migrations)).rejects.toThrow(
      `at version ${latest + 1}; this release knows up to ${latest}`,
    );
  });

  it('exclusive work queries freely while others wait for their locks: no deadlock on a small pool', async () => {
    const url = freshDatabase();
    const database = await PostgresDatabase.open({ connectionString: url, maxConnections: 2 });
    cleanups.push(() => database.close());
    // Eight holders of four names, each querying twice inside: lock waiters must not take the pool the
    // holders query through.
    const finished = Promise.all(
      Array.from({ length: 8 }, (_, index) =>
        database.exclusive(`patient-${index % 4}`, async () => {
          await database.all('select pg_sleep(0.02)');
          return (await database.all<{ value: number }>('select ? :: int as value', [index]))[0]?.value;
        }),
      ),
    );
    const outcome = await Promise.race([
      finished,
      new Promise((resolve) => setTimeout(() => resolve('deadlocked'), 15_000)),
    ]);
    expect(outcome).toEqual([0, 1, 2, 3, 4, 5, 6, 7]);
  });

  it('one leader at a time; when its connection dies another replica takes over, and it steps down', async () => {
    const url = freshDatabase();
    const changes: string[] = [];
    const candidates = await Promise.all(
      ['a', 'b', 'c'].map((name) =>
        AdvisoryLockLeadership.start({
          connectionString: url,
          name: 'scheduler',
          retryMs: 200,
          onChange: (isLeader) => changes.push(`${name}:${isLeader}`),
        }),
      ),
    );
    for (const candidate of candidates) cleanups.push(() => candidate.close());
    const leaders = () => candidates.filter((candidate) => candidate.isLeader);
    expect(leaders()).toHaveLength(1);
    const first = leaders()[0] as AdvisoryLockLeadership;
    const firstName = ['a', 'b', 'c'][candidates.indexOf(first)];

    // The leader's connection dies (its host vanishes): its session ends and the lock with it.
    const terminated = await query<{ terminated: boolean }>(
      url,
      `select pg_terminate_backend(pid) as terminated from pg_locks
         where locktype = 'advisory' and granted and database = (select oid from pg_database where datname = current_database())`,
    );
    expect(terminated).toEqual([{ terminated: true }]);
    // It steps down, and the lock is taken again: by another replica, or by this process on a new connection if it
    // is still alive and tries first (a replica that really died never does). Never two leaders at once.
    await waitFor(() => (changes.includes(`${firstName}:false`) ? true : undefined), 'the step-down', 10_000);
    await waitFor(() => (leaders().length === 1 ? true : undefined), 'a leader again', 10_000);
    for (let sample = 0; sample < 20; sample++) {
      expect(leaders().length).toBeLessThanOrEqual(1);
      await new Promise((resolve) => setTimeout(resolve, 25));
    }

    // A leader that stops hands over at once.
    const second = leaders()[0] as AdvisoryLockLeadership;
    await second.close();
    await waitFor(
      () => (leaders().length === 1 && leaders()[0] !== second ? true : undefined),
      'a leader after the close',
      10_000,
    );
    // Three terms at least: the first leader, the one after its connection died, the one after the close.
    expect(changes.filter((change) => change.endsWith(':true')).length).toBeGreaterThanOrEqual(3);
  });
});
