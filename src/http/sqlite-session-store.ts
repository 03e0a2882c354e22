import { DatabaseSync } from 'node:sqlite';
import { ensurePrivateFile } from '../drafts/private-files.ts';
import type { SessionStore } from './session.ts';

/**
 * Sessions in a SQLite file in the private data directory, so a restart or a redeploy does not sign every
 * clinician out, and processes on one host share them. Values hold users' access tokens: the file is 0600
 * inside the 0700 data directory. Replicas on several hosts need sticky sessions or a shared store.
 */
export class SqliteSessionStore<T> implements SessionStore<T> {
  readonly #database: DatabaseSync;
  readonly #now: () => number;
  #writesSinceSweep = 0;

  constructor(file: string, options: { now?: () => number } = {}) {
    this.#now = options.now ?? Date.now;
    this.#database = new DatabaseSync(file === ':memory:' ? file : ensurePrivateFile(file));
    this.#database.exec(
      'pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000;',
    );
    this.#database.exec(
      'create table if not exists smart_sessions (key text primary key, value text not null, expires_at integer not null)',
    );
  }

  async get(id: string): Promise<T | undefined> {
    const row = this.#database
      .prepare('select value, expires_at from smart_sessions where key = ?')
      .get(id) as { value: string; expires_at: number } | undefined;
    if (!row) return undefined;
    if (row.expires_at <= this.#now()) {
      this.#database.prepare('delete from smart_sessions where key = ?').run(id);
      return undefined;
    }
    return JSON.parse(row.value) as T;
  }

  async set(id: string, value: T, ttlSeconds: number): Promise<void> {
    this.#database
      .prepare(
        'insert into smart_sessions (key, value, expires_at) values (?, ?, ?) on conflict (key) do update set value = excluded.value, expires_at = excluded.expires_at',
      )
      .run(id, JSON.stringify(value), this.#now() + ttlSeconds * 1000);
    // Expired rows go in passing, without a timer that would keep the process alive.
    this.#writesSinceSweep += 1;
    if (this.#writesSinceSweep >= 100) {
      this.#writesSinceSweep = 0;
      this.#database.prepare('delete from smart_sessions where expires_at <= ?').run(this.#now());
    }
  }

  async delete(id: string): Promise<void> {
    this.#database.prepare('delete from smart_sessions where key = ?').run(id);
  }

  close(): void {
    this.#database.close();
  }
}
