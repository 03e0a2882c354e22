import type { SqlDatabase, SqlExecutor } from '../storage/sql-database.ts';
import { SqliteDatabase } from '../storage/sqlite-database.ts';

/**
 * What intake must remember across restarts: per-subscription event counters (highest number seen,
 * recently seen numbers, missing numbers awaiting recovery, last contact) for the tracked
 * subscriptions only, the Subscription the service ensured, the polling cursor, and the
 * (id, versionId) pairs polling has already queued inside its overlap window. One SQLite file, or
 * the shared PostgreSQL, where every replica counts against the same numbers and one cursor.
 */
export interface SubscriptionState {
  subscription: string;
  highest: number;
  lastContactAt: number;
  status: string | undefined;
}

export interface MissingEvent {
  subscription: string;
  eventNumber: number;
  detectedAt: number;
}

const sqliteSchema = `
create table if not exists subscription_state (
  subscription text primary key,
  highest integer not null,
  last_contact_at integer not null,
  status text
);
create table if not exists subscription_seen (
  subscription text not null,
  event_number integer not null,
  signature text not null,
  received_at integer not null,
  primary key (subscription, event_number)
);
create table if not exists subscription_missing (
  subscription text not null,
  event_number integer not null,
  detected_at integer not null,
  primary key (subscription, event_number)
);
create table if not exists service_subscription (
  singleton integer primary key check (singleton = 1),
  reference text not null,
  ensured_at integer not null
);
create table if not exists rate_buckets (
  name text not null,
  client text not null,
  tokens real not null,
  refilled_at integer not null,
  allowed integer not null,
  primary key (name, client)
);
create table if not exists poll_cursor (name text primary key, cursor text not null);
create table if not exists poll_seen (
  resource_id text not null,
  version text not null,
  last_updated text not null,
  primary key (resource_id, version)
);
`;

/** Seen event numbers kept per subscription: enough to recognise redeliveries, bounded in size. */
const seenWindow = 5_000;

type StateRow = {
  subscription: string;
  highest: number | string;
  last_contact_at: number | string;
  status: string | null;
};

export class IntakeStateStore {
  /** Where transactions begin; absent inside one (the store is then bound to that transaction). */
  readonly #database: SqlDatabase | undefined;
  readonly #executor: SqlExecutor;
  readonly #ownsDatabase: boolean;

  /** A SQLite file of its own (path), or the shared database. */
  constructor(target: string | SqlDatabase, executor?: SqlExecutor) {
    if (typeof target === 'string') {
      const database = new SqliteDatabase(target, sqliteSchema);
      this.#database = database;
      this.#executor = database;
      this.#ownsDatabase = true;
    } else {
      this.#database = executor ? undefined : target;
      this.#executor = executor ?? target;
      this.#ownsDatabase = false;
    }
  }

  /**
   * Runs the work in one transaction (one commit per batch of notifications), alone across replicas:
   * counters are read, compared and written back, so two replicas must not interleave.
   */
  async transaction<T>(work: (state: IntakeStateStore) => Promise<T>): Promise<T> {
    const database = this.#database;
    if (!database) return work(this);
    return database.transaction((executor) => work(new IntakeStateStore(database, executor)), {
      lock: 'intake-counters',
    });
  }

  /** Work that reads and advances the polling cursor around FHIR reads: one replica at a time. */
  async exclusive<T>(name: string, work: () => Promise<T>): Promise<T> {
    if (!this.#database) throw new Error('exclusive work cannot run inside a transaction');
    return this.#database.exclusive(name, work);
  }

  async subscription(subscription: string): Promise<SubscriptionState | undefined> {
    const [row] = await this.#executor.all<StateRow>(
      'select * from subscription_state where subscription = ?',
      [subscription],
    );
    return row
      ? {
          subscription: row.subscription,
          highest: Number(row.highest),
          lastContactAt: Number(row.last_contact_at),
          status: row.status ?? undefined,
        }
      : undefined;
  }

  async subscriptions(): Promise<SubscriptionState[]> {
    const rows = await this.#executor.all<StateRow>('select * from subscription_state order by subscription');
    return rows.map((row) => ({
      subscription: row.subscription,
      highest: Number(row.highest),
      lastContactAt: Number(row.last_contact_at),
      status: row.status ?? undefined,
    }));
  }

  async saveSubscription(state: SubscriptionState): Promise<void> {
    await this.#executor.run(
      `insert into subscription_state (subscription, highest, last_contact_at, status) values (?, ?, ?, ?)
         on conflict (subscription) do update set highest = excluded.highest,
           last_contact_at = excluded.last_contact_at, status = excluded.status`,
      [state.subscription, state.highest, state.lastContactAt, state.status ?? null],
    );
  }

  /**
   * How a number compares with what was seen: `new`, `duplicate` (same number, same focus and
   * timestamp: a redelivery) or `conflict` (same number, another event: the server started over).
   */
  async seenAs(
    subscription: string,
    eventNumber: number,
    signature: string,
  ): Promise<'new' | 'duplicate' | 'conflict'> {
    const [row] = await this.#executor.all<{ signature: string }>(
      'select signature from subscription_seen where subscription = ? and event_number = ?',
      [subscription, eventNumber],
    );
    if (!row) return 'new';
    return row.signature === signature || row.signature === '' || signature === '' ? 'duplicate' : 'conflict';
  }

  async markSeen(subscription: string, eventNumber: number, signature: string, now: number): Promise<void> {
    await this.#executor.run(
      `insert into subscription_seen (subscription, event_number, signature, received_at) values (?, ?, ?, ?)
         on conflict (subscription, event_number) do update set signature = excluded.signature, received_at = excluded.received_at`,
      [subscription, eventNumber, signature, now],
    );
    // Pruning now and then is enough to keep the window bounded.
    if (eventNumber % 100 === 0) {
      await this.#executor.run('delete from subscription_seen where subscription = ? and event_number <= ?', [
        subscription,
        eventNumber - seenWindow,
      ]);
    }
  }

  async wasSeen(subscription: string, eventNumber: number): Promise<boolean> {
    const rows = await this.#executor.all(
      'select 1 from subscription_seen where subscription = ? and event_number = ?',
      [subscription, eventNumber],
    );
    return rows.length > 0;
  }

  async isMissing(subscription: string, eventNumber: number): Promise<boolean> {
    const rows = await this.#executor.all(
      'select 1 from subscription_missing where subscription = ? and event_number = ?',
      [subscription, eventNumber],
    );
    return rows.length > 0;
  }

  async addMissing(subscription: string, numbers: number[], now: number): Promise<void> {
    for (const number of numbers)
      await this.#executor.run(
        'insert into subscription_missing (subscription, event_number, detected_at) values (?, ?, ?) on conflict do nothing',
        [subscription, number, now],
      );
  }

  /** True when the number was missing (it arrived late, out of order) and is now filled. */
  async fillMissing(subscription: string, eventNumber: number): Promise<boolean> {
    const changed = await this.#executor.run(
      'delete from subscription_missing where subscription = ? and event_number = ?',
      [subscription, eventNumber],
    );
    return changed > 0;
  }

  async missingOlderThan(cutoff: number): Promise<MissingEvent[]> {
    const rows = await this.#executor.all<{
      subscription: string;
      event_number: number | string;
      detected_at: number | string;
    }>(
      'select subscription, event_number, detected_at from subscription_missing where detected_at <= ? order by subscription, event_number',
      [cutoff],
    );
    return rows.map((row) => ({
      subscription: row.subscription,
      eventNumber: Number(row.event_number),
      detectedAt: Number(row.detected_at),
    }));
  }

  async missingCount(subscription: string): Promise<number> {
    const [row] = await this.#executor.all<{ total: number | string }>(
      'select count(*) as total from subscription_missing where subscription = ?',
      [subscription],
    );
    return Number(row?.total ?? 0);
  }

  async clearMissing(subscription: string, numbers?: number[]): Promise<void> {
    if (!numbers) {
      await this.#executor.run('delete from subscription_missing where subscription = ?', [subscription]);
      return;
    }
    for (const number of numbers)
      await this.#executor.run(
        'delete from subscription_missing where subscription = ? and event_number = ?',
        [subscription, number],
      );
  }

  /** Everything kept about one subscription, when it is no longer tracked. */
  async forgetSubscription(subscription: string): Promise<void> {
    await this.#executor.run('delete from subscription_seen where subscription = ?', [subscription]);
    await this.#executor.run('delete from subscription_missing where subscription = ?', [subscription]);
    await this.#executor.run('delete from subscription_state where subscription = ?', [subscription]);
  }

  /** Forgets every subscription not in the list (left by an earlier version, or no longer configured). */
  async forgetSubscriptionsExcept(kept: string[]): Promise<number> {
    const keep = new Set(kept);
    return this.transaction(async (state) => {
      const stored = await state.#executor.all<{ subscription: string }>(
        `select subscription from subscription_state union select subscription from subscription_seen
           union select subscription from subscription_missing`,
      );
      const forgotten = stored
        .map((row) => row.subscription)
        .filter((subscription) => !keep.has(subscription));
      for (const subscription of forgotten) await state.forgetSubscription(subscription);
      return forgotten.length;
    });
  }

  /** The reference of the Subscription the service last ensured on its FHIR server. */
  async serviceSubscription(): Promise<string | undefined> {
    const [row] = await this.#executor.all<{ reference: string }>(
      'select reference from service_subscription where singleton = 1',
    );
    return row?.reference;
  }

  async saveServiceSubscription(reference: string, now: number): Promise<void> {
    await this.#executor.run(
      `insert into service_subscription (singleton, reference, ensured_at) values (1, ?, ?)
         on conflict (singleton) do update set reference = excluded.reference, ensured_at = excluded.ensured_at`,
      [reference, now],
    );
  }

  /** After a counter reset the old numbers mean nothing: forget them. */
  async resetSubscription(subscription: string, highest: number, now: number): Promise<void> {
    await this.#executor.run('delete from subscription_seen where subscription = ?', [subscription]);
    await this.#executor.run('delete from subscription_missing where subscription = ?', [subscription]);
    const state = await this.subscription(subscription);
    await this.saveSubscription({ subscription, highest, lastContactAt: now, status: state?.status });
  }

  async cursor(name: string): Promise<string | undefined> {
    const [row] = await this.#executor.all<{ cursor: string }>(
      'select cursor from poll_cursor where name = ?',
      [name],
    );
    return row?.cursor;
  }

  async saveCursor(name: string, cursor: string): Promise<void> {
    await this.#executor.run(
      'insert into poll_cursor (name, cursor) values (?, ?) on conflict (name) do update set cursor = excluded.cursor',
      [name, cursor],
    );
  }

  /** Saves the cursor only when none is saved yet (a replica starting must not move another's back). */
  async initialiseCursor(name: string, cursor: string): Promise<void> {
    await this.#executor.run('insert into poll_cursor (name, cursor) values (?, ?) on conflict do nothing', [
      name,
      cursor,
    ]);
  }

  /** Records that polling queued this (id, version); false when it already had. */
  async markPolled(resourceId: string, version: string, lastUpdated: string): Promise<boolean> {
    const changed = await this.#executor.run(
      'insert into poll_seen (resource_id, version, last_updated) values (?, ?, ?) on conflict do nothing',
      [resourceId, version, lastUpdated],
    );
    return changed > 0;
  }

  /** Forgets polled versions older than anything a poll can return again. */
  async prunePolled(olderThan: string): Promise<void> {
    await this.#executor.run('delete from poll_seen where last_updated < ?', [olderThan]);
  }

  /**
   * Spends one of the client's tokens in the named bucket (`perMinute` tokens, refilled continuously),
   * in one statement, so replicas draw on one budget per client. Refused: how long until a token is back.
   */
  async takeToken(
    name: string,
    client: string,
    perMinute: number,
    now: number,
  ): Promise<{ allowed: boolean; retryAfterSeconds: number }> {
    const smaller = this.#executor.dialect === 'postgres' ? 'least' : 'min';
    const refilled = `${smaller}(cast(? as double precision), rate_buckets.tokens + (excluded.refilled_at - rate_buckets.refilled_at) * cast(? as double precision) / 60000.0)`;
    const [row] = await this.#executor.all<{ tokens: number | string; allowed: number | string }>(
      `insert into rate_buckets (name, client, tokens, refilled_at, allowed) values (?, ?, ?, ?, 1)
         on conflict (name, client) do update set
           tokens = case when ${refilled} >= 1 then ${refilled} - 1 else ${refilled} end,
           allowed = case when ${refilled} >= 1 then 1 else 0 end,
           refilled_at = excluded.refilled_at
         returning tokens, allowed`,
      [name, client, perMinute - 1, now, ...Array.from({ length: 4 }, () => [perMinute, perMinute]).flat()],
    );
    this.#tokensSincePrune += 1;
    if (this.#tokensSincePrune >= 100) {
      this.#tokensSincePrune = 0;
      // A bucket untouched for ten minutes is full again whatever its rate: forgetting it changes nothing.
      await this.#executor.run('delete from rate_buckets where refilled_at < ?', [now - 600_000]);
    }
    const tokens = Number(row?.tokens ?? 0);
    const allowed = Number(row?.allowed ?? 0) === 1;
    return { allowed, retryAfterSeconds: Math.max(1, Math.ceil(((1 - tokens) / perMinute) * 60)) };
  }

  #tokensSincePrune = 0;

  async close(): Promise<void> {
    if (this.#ownsDatabase) await this.#database?.close();
  }
}
