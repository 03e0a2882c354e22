import { DatabaseSync, type StatementSync } from 'node:sqlite';

/**
 * What intake must remember across restarts: per-subscription event counters (highest number seen,
 * recently seen numbers, missing numbers awaiting recovery, last contact) for the tracked
 * subscriptions only, the Subscription the service ensured, the polling cursor, and the
 * (id, versionId) pairs polling has already queued inside its overlap window. One SQLite file.
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

const schema = `
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

export class IntakeStateStore {
  readonly #database: DatabaseSync;
  /** Prepared once: intake runs these for every notification. */
  readonly #statements = new Map<string, StatementSync>();

  #prepare(sql: string): StatementSync {
    let statement = this.#statements.get(sql);
    if (!statement) {
      statement = this.#database.prepare(sql);
      this.#statements.set(sql, statement);
    }
    return statement;
  }

  constructor(file: string) {
    this.#database = new DatabaseSync(file);
    this.#database.exec(
      'pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000;',
    );
    this.#database.exec(schema);
  }

  /** Runs the work in one transaction: one commit per notification instead of one per statement. */
  transaction<T>(work: () => T): T {
    this.#database.exec('begin immediate');
    try {
      const result = work();
      this.#database.exec('commit');
      return result;
    } catch (error) {
      this.#database.exec('rollback');
      throw error;
    }
  }

  subscription(subscription: string): SubscriptionState | undefined {
    const row = this.#prepare('select * from subscription_state where subscription = ?').get(subscription) as
      | { subscription: string; highest: number; last_contact_at: number; status: string | null }
      | undefined;
    return row
      ? {
          subscription: row.subscription,
          highest: row.highest,
          lastContactAt: row.last_contact_at,
          status: row.status ?? undefined,
        }
      : undefined;
  }

  subscriptions(): SubscriptionState[] {
    return (
      this.#prepare('select subscription from subscription_state').all() as {
        subscription: string;
      }[]
    ).map((row) => this.subscription(row.subscription) as SubscriptionState);
  }

  saveSubscription(state: SubscriptionState): void {
    this.#prepare(
      `insert into subscription_state (subscription, highest, last_contact_at, status) values (?, ?, ?, ?)
         on conflict (subscription) do update set highest = excluded.highest,
           last_contact_at = excluded.last_contact_at, status = excluded.status`,
    ).run(state.subscription, state.highest, state.lastContactAt, state.status ?? null);
  }

  /**
   * How a number compares with what was seen: `new`, `duplicate` (same number, same focus and
   * timestamp: a redelivery) or `conflict` (same number, another event: the server started over).
   */
  seenAs(subscription: string, eventNumber: number, signature: string): 'new' | 'duplicate' | 'conflict' {
    const row = this.#prepare(
      'select signature from subscription_seen where subscription = ? and event_number = ?',
    ).get(subscription, eventNumber) as { signature: string } | undefined;
    if (!row) return 'new';
    return row.signature === signature || row.signature === '' || signature === '' ? 'duplicate' : 'conflict';
  }

  markSeen(subscription: string, eventNumber: number, signature: string, now: number): void {
    this.#prepare(
      `insert into subscription_seen (subscription, event_number, signature, received_at) values (?, ?, ?, ?)
         on conflict do update set signature = excluded.signature, received_at = excluded.received_at`,
    ).run(subscription, eventNumber, signature, now);
    // Pruning now and then is enough to keep the window bounded.
    if (eventNumber % 100 === 0) {
      this.#prepare('delete from subscription_seen where subscription = ? and event_number <= ?').run(
        subscription,
        eventNumber - seenWindow,
      );
    }
  }

  wasSeen(subscription: string, eventNumber: number): boolean {
    return (
      this.#prepare('select 1 from subscription_seen where subscription = ? and event_number = ?').get(
        subscription,
        eventNumber,
      ) !== undefined
    );
  }

  isMissing(subscription: string, eventNumber: number): boolean {
    return (
      this.#prepare('select 1 from subscription_missing where subscription = ? and event_number = ?').get(
        subscription,
        eventNumber,
      ) !== undefined
    );
  }

  addMissing(subscription: string, numbers: number[], now: number): void {
    const insert = this.#prepare(
      'insert into subscription_missing (subscription, event_number, detected_at) values (?, ?, ?) on conflict do nothing',
    );
    for (const number of numbers) insert.run(subscription, number, now);
  }

  /** True when the number was missing (it arrived late, out of order) and is now filled. */
  fillMissing(subscription: string, eventNumber: number): boolean {
    const result = this.#prepare(
      'delete from subscription_missing where subscription = ? and event_number = ?',
    ).run(subscription, eventNumber);
    return Number(result.changes) > 0;
  }

  missingOlderThan(cutoff: number): MissingEvent[] {
    return (
      this.#prepare(
        'select subscription, event_number, detected_at from subscription_missing where detected_at <= ? order by subscription, event_number',
      ).all(cutoff) as { subscription: string; event_number: number; detected_at: number }[]
    ).map((row) => ({
      subscription: row.subscription,
      eventNumber: row.event_number,
      detectedAt: row.detected_at,
    }));
  }

  missingCount(subscription: string): number {
    const row = this.#prepare(
      'select count(*) as total from subscription_missing where subscription = ?',
    ).get(subscription) as { total: number };
    return Number(row.total);
  }

  clearMissing(subscription: string, numbers?: number[]): void {
    if (!numbers) {
      this.#prepare('delete from subscription_missing where subscription = ?').run(subscription);
      return;
    }
    const remove = this.#prepare(
      'delete from subscription_missing where subscription = ? and event_number = ?',
    );
    for (const number of numbers) remove.run(subscription, number);
  }

  /** Everything kept about one subscription, when it is no longer tracked. */
  forgetSubscription(subscription: string): void {
    this.#prepare('delete from subscription_seen where subscription = ?').run(subscription);
    this.#prepare('delete from subscription_missing where subscription = ?').run(subscription);
    this.#prepare('delete from subscription_state where subscription = ?').run(subscription);
  }

  /** Forgets every subscription not in the list (left by an earlier version, or no longer configured). */
  forgetSubscriptionsExcept(kept: string[]): number {
    const keep = new Set(kept);
    const stored = new Set(
      (
        this.#prepare(
          `select subscription from subscription_state union select subscription from subscription_seen
             union select subscription from subscription_missing`,
        ).all() as { subscription: string }[]
      ).map((row) => row.subscription),
    );
    const forgotten = [...stored].filter((subscription) => !keep.has(subscription));
    this.transaction(() => {
      for (const subscription of forgotten) this.forgetSubscription(subscription);
    });
    return forgotten.length;
  }

  /** The reference of the Subscription the service last ensured on its FHIR server. */
  serviceSubscription(): string | undefined {
    const row = this.#prepare('select reference from service_subscription where singleton = 1').get() as
      | { reference: string }
      | undefined;
    return row?.reference;
  }

  saveServiceSubscription(reference: string, now: number): void {
    this.#prepare(
      `insert into service_subscription (singleton, reference, ensured_at) values (1, ?, ?)
         on conflict (singleton) do update set reference = excluded.reference, ensured_at = excluded.ensured_at`,
    ).run(reference, now);
  }

  /** After a counter reset the old numbers mean nothing: forget them. */
  resetSubscription(subscription: string, highest: number, now: number): void {
    this.#prepare('delete from subscription_seen where subscription = ?').run(subscription);
    this.#prepare('delete from subscription_missing where subscription = ?').run(subscription);
    const state = this.subscription(subscription);
    this.saveSubscription({ subscription, highest, lastContactAt: now, status: state?.status });
  }

  cursor(name: string): string | undefined {
    const row = this.#prepare('select cursor from poll_cursor where name = ?').get(name) as
      | { cursor: string }
      | undefined;
    return row?.cursor;
  }

  saveCursor(name: string, cursor: string): void {
    this.#prepare(
      'insert into poll_cursor (name, cursor) values (?, ?) on conflict (name) do update set cursor = excluded.cursor',
    ).run(name, cursor);
  }

  /** Records that polling queued this (id, version); false when it already had. */
  markPolled(resourceId: string, version: string, lastUpdated: string): boolean {
    const result = this.#prepare(
      'insert into poll_seen (resource_id, version, last_updated) values (?, ?, ?) on conflict do nothing',
    ).run(resourceId, version, lastUpdated);
    return Number(result.changes) > 0;
  }

  /** Forgets polled versions older than anything a poll can return again. */
  prunePolled(olderThan: string): void {
    this.#prepare('delete from poll_seen where last_updated < ?').run(olderThan);
  }

  close(): void {
    if (this.#database.isOpen) this.#database.close();
  }
}
