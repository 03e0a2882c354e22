import { ensurePrivateFile } from '../drafts/private-files.ts';
import type { SqlDatabase } from '../storage/sql-database.ts';
import { SqliteDatabase } from '../storage/sqlite-database.ts';
import type { SessionStore } from './session.ts';

/**
 * Sessions in SQL, so a restart or a redeploy does not sign every clinician out: a SQLite file in the
 * private data directory (processes on one host share it), or the shared PostgreSQL, where a session
 * started through one replica continues through any other. Values hold users' access tokens: the
 * file is 0600 inside the 0700 data directory.
 */
export class SqlSessionStore<T> implements SessionStore<T> {
  readonly #database: SqlDatabase;
  readonly #now: () => number;
  readonly #ownsDatabase: boolean;
  #writesSinceSweep = 0;

  constructor(database: SqlDatabase, options: { now?: () => number; ownsDatabase?: boolean } = {}) {
    this.#database = database;
    this.#now = options.now ?? Date.now;
    this.#ownsDatabase = options.ownsDatabase ?? false;
  }

  async get(id: string): Promise<T | undefined> {
    const [row] = await this.#database.all<{ value: string; expires_at: number | string }>(
      'select value, expires_at from smart_sessions where key = ?',
      [id],
    );
    if (!row) return undefined;
    if (Number(row.expires_at) <= this.#now()) {
      await this.#database.run('delete from smart_sessions where key = ?', [id]);
      return undefined;
    }
    return JSON.parse(row.value) as T;
  }

  async set(id: string, value: T, ttlSeconds: number): Promise<void> {
    await this.#database.run(
      'insert into smart_sessions (key, value, expires_at) values (?, ?, ?) on conflict (key) do update set value = excluded.value, expires_at = excluded.expires_at',
      [id, JSON.stringify(value), this.#now() + ttlSeconds * 1000],
    );
    // Expired rows go in passing, without a timer that would keep the process alive.
    this.#writesSinceSweep += 1;
    if (this.#writesSinceSweep >= 100) {
      this.#writesSinceSweep = 0;
      await this.#database.run('delete from smart_sessions where expires_at <= ?', [this.#now()]);
    }
  }

  async delete(id: string): Promise<void> {
    await this.#database.run('delete from smart_sessions where key = ?', [id]);
  }

  close(): void {
    if (this.#ownsDatabase) void this.#database.close();
  }
}

/** The embedded store: `<dataDir>/smart-sessions.sqlite`. */
export class SqliteSessionStore<T> extends SqlSessionStore<T> {
  constructor(file: string, options: { now?: () => number } = {}) {
    super(
      new SqliteDatabase(
        file === ':memory:' ? file : ensurePrivateFile(file),
        'create table if not exists smart_sessions (key text primary key, value text not null, expires_at integer not null)',
      ),
      { ...options, ownsDatabase: true },
    );
  }
}
