import pg from 'pg';
import { type Migration, migrations } from './migrations.ts';
import { numberedPlaceholders, type SqlDatabase, type SqlExecutor, type SqlValue } from './sql-database.ts';

/**
 * The shared adapter: every store's tables in one PostgreSQL schema (`ehr_agent` by default, beside
 * pg-boss's own), one connection pool per process. At open, the migrations not yet applied are
 * applied in order, each in its own transaction, under a session advisory lock: replicas starting
 * together wait for the first one and then find nothing left to do.
 */
export interface PostgresOptions {
  connectionString: string;
  schema?: string;
  /** Connections in this process's pool. */
  maxConnections?: number;
}

const identifierPattern = /^[a-z_][a-z0-9_]{0,62}$/;

export class PostgresDatabase implements SqlDatabase {
  readonly dialect = 'postgres' as const;
  readonly pool: pg.Pool;
  /**
   * Connections that only hold `exclusive` locks, apart from the pool the work itself queries through:
   * a holder never waits for a connection that lock waiters took, so waiting cannot deadlock.
   */
  readonly #lockPool: pg.Pool;
  readonly schema: string;
  readonly connectionString: string;

  private constructor(pool: pg.Pool, lockPool: pg.Pool, options: PostgresOptions & { schema: string }) {
    this.pool = pool;
    this.#lockPool = lockPool;
    this.schema = options.schema;
    this.connectionString = options.connectionString;
  }

  static async open(
    options: PostgresOptions,
    schemaMigrations: readonly Migration[] = migrations,
  ): Promise<PostgresDatabase> {
    const schema = options.schema ?? 'ehr_agent';
    if (!identifierPattern.test(schema)) throw new Error(`not a plain PostgreSQL schema name: ${schema}`);
    const pool = new pg.Pool({
      connectionString: options.connectionString,
      max: options.maxConnections ?? 6,
      // Every connection resolves the stores' table names in their own schema.
      options: `-c search_path=${schema}`,
    });
    const lockPool = new pg.Pool({ connectionString: options.connectionString, max: 3 });
    // An idle connection that breaks (a server restart) is dropped by the pool; the next query opens another.
    pool.on('error', () => undefined);
    lockPool.on('error', () => undefined);
    const database = new PostgresDatabase(pool, lockPool, { ...options, schema });
    try {
      await database.#migrate(schemaMigrations);
    } catch (error) {
      await pool.end();
      await lockPool.end();
      throw error;
    }
    return database;
  }

  async #migrate(schemaMigrations: readonly Migration[]): Promise<void> {
    const client = await this.pool.connect();
    try {
      await client.query('select pg_advisory_lock(hashtext($1))', [`${this.schema}:migrations`]);
      try {
        await client.query(`create schema if not exists ${this.schema}`);
        await client.query(
          'create table if not exists schema_migrations (version integer primary key, name text not null, applied_at timestamptz not null default now())',
        );
        const { rows } = await client.query<{ version: number }>('select version from schema_migrations');
        const applied = new Set(rows.map((row) => row.version));
        const newest = Math.max(0, ...applied);
        const known = Math.max(0, ...schemaMigrations.map((migration) => migration.version));
        // A database migrated by a newer release: this one does not know its tables.
        if (newest > known)
          throw new Error(
            `database schema ${this.schema} is at version ${newest}; this release knows up to ${known}`,
          );
        for (const migration of [...schemaMigrations].sort((left, right) => left.version - right.version)) {
          if (applied.has(migration.version)) continue;
          await client.query('begin');
          try {
            await client.query(migration.sql);
            await client.query('insert into schema_migrations (version, name) values ($1, $2)', [
              migration.version,
              migration.name,
            ]);
            await client.query('commit');
          } catch (error) {
            await client.query('rollback');
            throw new Error(
              `migration ${migration.version} (${migration.name}) failed: ${(error as Error).message}`,
            );
          }
        }
      } finally {
        await client.query('select pg_advisory_unlock(hashtext($1))', [`${this.schema}:migrations`]);
      }
    } finally {
      client.release();
    }
  }

  async all<Row>(sql: string, parameters: readonly SqlValue[] = []): Promise<Row[]> {
    const result = await this.pool.query(numberedPlaceholders(sql), parameters as SqlValue[]);
    return result.rows as Row[];
  }

  async run(sql: string, parameters: readonly SqlValue[] = []): Promise<number> {
    const result = await this.pool.query(numberedPlaceholders(sql), parameters as SqlValue[]);
    return result.rowCount ?? 0;
  }

  async transaction<Result>(
    work: (executor: SqlExecutor) => Promise<Result>,
    options: { lock?: string } = {},
  ): Promise<Result> {
    const client = await this.pool.connect();
    const executor: SqlExecutor = {
      dialect: 'postgres',
      all: async <Row>(sql: string, parameters: readonly SqlValue[] = []) =>
        (await client.query(numberedPlaceholders(sql), parameters as SqlValue[])).rows as Row[],
      run: async (sql: string, parameters: readonly SqlValue[] = []) =>
        (await client.query(numberedPlaceholders(sql), parameters as SqlValue[])).rowCount ?? 0,
    };
    let broken = false;
    try {
      await client.query('begin');
      try {
        if (options.lock)
          await client.query('select pg_advisory_xact_lock(hashtext($1))', [
            `${this.schema}:${options.lock}`,
          ]);
        const result = await work(executor);
        await client.query('commit');
        return result;
      } catch (error) {
        await client.query('rollback').catch(() => {
          broken = true;
        });
        throw error;
      }
    } finally {
      client.release(broken);
    }
  }

  async exclusive<Result>(name: string, work: () => Promise<Result>): Promise<Result> {
    const client = await this.#lockPool.connect();
    const key = `${this.schema}:exclusive:${name}`;
    let broken = false;
    try {
      await client.query('select pg_advisory_lock(hashtext($1))', [key]);
      try {
        return await work();
      } finally {
        await client.query('select pg_advisory_unlock(hashtext($1))', [key]).catch(() => {
          broken = true;
        });
      }
    } finally {
      // A connection whose unlock failed is closed, which releases the lock with it.
      client.release(broken);
    }
  }

  async close(): Promise<void> {
    await this.pool.end();
    await this.#lockPool.end();
  }
}
