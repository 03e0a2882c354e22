import { DatabaseSync, type SQLInputValue, type StatementSync } from 'node:sqlite';
import type { SqlDatabase, SqlExecutor, SqlValue } from './sql-database.ts';

/**
 * The embedded adapter: one SQLite file (node:sqlite). Its calls are synchronous underneath, so a
 * transaction that awaits between statements must keep other callers out until it ends: every call
 * waits its turn behind the open transaction (a promise chain, one process).
 */
export class SqliteDatabase implements SqlDatabase {
  readonly dialect = 'sqlite' as const;
  readonly #database: DatabaseSync;
  readonly #statements = new Map<string, StatementSync>();
  #turn: Promise<unknown> = Promise.resolve();
  readonly #executor: SqlExecutor;

  /** Opens the file and creates what `schema` declares (`create ... if not exists`). */
  constructor(file: string, schema: string) {
    this.#database = new DatabaseSync(file);
    this.#database.exec(
      'pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000;',
    );
    this.#database.exec(schema);
    this.#executor = {
      dialect: 'sqlite',
      all: async <Row>(sql: string, parameters: readonly SqlValue[] = []) => this.#all<Row>(sql, parameters),
      run: async (sql: string, parameters: readonly SqlValue[] = []) => this.#run(sql, parameters),
    };
  }

  #prepare(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#database.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  #all<Row>(sql: string, parameters: readonly SqlValue[]): Row[] {
    return this.#prepare(sql).all(...(parameters.map(toSqlite) as SQLInputValue[])) as Row[];
  }

  #run(sql: string, parameters: readonly SqlValue[]): number {
    return Number(this.#prepare(sql).run(...(parameters.map(toSqlite) as SQLInputValue[])).changes);
  }

  #inTurn<Result>(work: () => Promise<Result> | Result): Promise<Result> {
    const result = this.#turn.then(work);
    this.#turn = result.catch(() => undefined);
    return result;
  }

  all<Row>(sql: string, parameters: readonly SqlValue[] = []): Promise<Row[]> {
    return this.#inTurn(() => this.#all<Row>(sql, parameters));
  }

  run(sql: string, parameters: readonly SqlValue[] = []): Promise<number> {
    return this.#inTurn(() => this.#run(sql, parameters));
  }

  transaction<Result>(work: (executor: SqlExecutor) => Promise<Result>): Promise<Result> {
    return this.#inTurn(async () => {
      this.#database.exec('begin immediate');
      try {
        const result = await work(this.#executor);
        this.#database.exec('commit');
        return result;
      } catch (error) {
        this.#database.exec('rollback');
        throw error;
      }
    });
  }

  readonly #exclusive = new Map<string, Promise<unknown>>();

  exclusive<Result>(name: string, work: () => Promise<Result>): Promise<Result> {
    const result = (this.#exclusive.get(name) ?? Promise.resolve()).then(work);
    this.#exclusive.set(
      name,
      result.catch(() => undefined),
    );
    return result;
  }

  async close(): Promise<void> {
    await this.#turn;
    if (this.#database.isOpen) this.#database.close();
  }
}

function toSqlite(value: SqlValue): SQLInputValue {
  return typeof value === 'boolean' ? (value ? 1 : 0) : value;
}
