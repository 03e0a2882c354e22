/**
 * The one port every store speaks: parameterised SQL (`?` placeholders) against the embedded SQLite
 * file or the shared PostgreSQL, with transactions. Stores write their SQL once in the dialect both
 * engines share (upserts with `on conflict`, `excluded`); the few differences ask `dialect`.
 */
export type SqlDialect = 'sqlite' | 'postgres';

export type SqlValue = string | number | boolean | null;

export interface SqlExecutor {
  readonly dialect: SqlDialect;
  /** The rows a query returns (PostgreSQL bigints arrive as strings: convert with Number()). */
  all<Row>(sql: string, parameters?: readonly SqlValue[]): Promise<Row[]>;
  /** Runs a statement; returns how many rows it changed. */
  run(sql: string, parameters?: readonly SqlValue[]): Promise<number>;
}

export interface SqlDatabase extends SqlExecutor {
  /**
   * Runs the work in one transaction. `lock` names what the work must do alone across every replica
   * (a transaction-scoped advisory lock in PostgreSQL; SQLite's one writer already is alone).
   */
  transaction<Result>(
    work: (executor: SqlExecutor) => Promise<Result>,
    options?: { lock?: string },
  ): Promise<Result>;
  /**
   * Runs work that spans more than the database (FHIR reads between a read and a write of the
   * store) alone: one holder of `name` at a time across replicas (a session advisory lock held on a
   * connection for the duration in PostgreSQL; in one SQLite process, one at a time in the process).
   * Not a transaction: the work's statements commit as they go.
   */
  exclusive<Result>(name: string, work: () => Promise<Result>): Promise<Result>;
  close(): Promise<void>;
}

/** `?` placeholders as PostgreSQL's `$1, $2...`; the stores' SQL carries no `?` in literals. */
export function numberedPlaceholders(sql: string): string {
  let index = 0;
  return sql.replace(/\?/g, () => `$${++index}`);
}
