import { randomUUID } from 'node:crypto';
import { DatabaseSync, type StatementSync } from 'node:sqlite';
import {
  type BackoffPolicy,
  defaultMaxJobMs,
  type EncounterJob,
  type EncounterJobInput,
  type FailureDecision,
  type JobQueue,
  type JobStatus,
  nextDelayMs,
  type QueueCounts,
} from './job-queue.ts';

/** The embedded queue: one SQLite file in the data directory, WAL mode, so a restart or a crash loses nothing. */
interface JobRow {
  id: string;
  encounter_id: string;
  source: string;
  version_id: string | null;
  kind: string | null;
  status: JobStatus;
  attempts: number;
  created_at: number;
  run_at: number;
  last_error: string | null;
  outcome: string | null;
}

const schema = `
create table if not exists jobs (
  id text primary key,
  encounter_id text not null,
  source text not null,
  version_id text,
  kind text,
  status text not null check (status in ('pending', 'running', 'done', 'failed')),
  attempts integer not null default 0,
  created_at integer not null,
  run_at integer not null,
  lease_until integer,
  claimed_at integer,
  worker_id text,
  last_error text,
  outcome text,
  finished_at integer
);
-- At most one waiting job per encounter and kind: duplicates collapse at intake. A clinician's request to
-- regenerate stays a job of its own, so it is never folded into an event job that the ledger would skip.
drop index if exists jobs_one_pending;
create unique index if not exists jobs_one_pending_by_purpose
  on jobs (encounter_id, coalesce(kind, ''), source = 'regenerate') where status = 'pending';
create index if not exists jobs_due on jobs (status, run_at);
-- The claim looks for a live running job of the same encounter before handing one out.
create index if not exists jobs_running_by_encounter on jobs (encounter_id, lease_until) where status = 'running';
-- Idempotency: (encounter id, versionId, kind, configuration version) already drafted.
create table if not exists completed_work (
  work_key text primary key,
  outcome text not null,
  completed_at integer not null
);
`;

/** A job of the candidate's encounter that a worker holds now (a lapsed lease no longer counts). */
const liveJobOfSameEncounter = `select 1 from jobs running
  where running.encounter_id = candidate.encounter_id and running.status = 'running' and running.lease_until >= :now`;

function toJob(row: JobRow): EncounterJob {
  return {
    id: row.id,
    encounterId: row.encounter_id,
    source: row.source,
    ...(row.version_id ? { versionId: row.version_id } : {}),
    ...(row.kind ? { kind: row.kind as EncounterJob['kind'] } : {}),
    status: row.status,
    attempts: row.attempts,
    createdAt: new Date(row.created_at).toISOString(),
    runAt: new Date(row.run_at).toISOString(),
    ...(row.last_error ? { lastError: row.last_error } : {}),
    ...(row.outcome ? { outcome: row.outcome } : {}),
  };
}

export class SqliteJobQueue implements JobQueue {
  readonly #database: DatabaseSync;
  readonly #policy: BackoffPolicy;
  readonly #now: () => number;

  constructor(file: string, policy: BackoffPolicy, now: () => number = Date.now) {
    this.#database = new DatabaseSync(file);
    // WAL lets readers (API listings) run beside the writer; busy_timeout lets two processes share the file.
    this.#database.exec(
      'pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000;',
    );
    this.#database.exec(schema);
    // Files made before leases were renewed have no claim time (renewals stop at maxJobMs after the claim).
    const columns = this.#database.prepare('pragma table_info(jobs)').all() as { name: string }[];
    if (!columns.some((column) => column.name === 'claimed_at'))
      this.#database.exec('alter table jobs add column claimed_at integer');
    this.#policy = policy;
    this.#now = now;
  }

  #insert: StatementSync | undefined;

  #waitingEnqueues: {
    jobs: EncounterJobInput[];
    resolve: (result: { added: number }) => void;
    reject: (error: unknown) => void;
  }[] = [];

  /**
   * Group commit: enqueues arriving in the same turn of the event loop share one transaction, so a
   * burst of notifications costs one WAL commit, not one each. Each caller still learns its own count,
   * and nobody is answered before the commit.
   */
  enqueue(jobs: EncounterJobInput[]): Promise<{ added: number }> {
    return new Promise((resolve, reject) => {
      this.#waitingEnqueues.push({ jobs, resolve, reject });
      if (this.#waitingEnqueues.length === 1) setImmediate(() => this.#flushEnqueues());
    });
  }

  #flushEnqueues(): void {
    const batch = this.#waitingEnqueues.splice(0);
    // Prepared once: intake runs this for every notification.
    this.#insert ??= this.#database.prepare(
      `insert into jobs (id, encounter_id, source, version_id, kind, status, created_at, run_at)
       values (?, ?, ?, ?, ?, 'pending', ?, ?) on conflict do nothing`,
    );
    const insert = this.#insert;
    const counts: number[] = [];
    try {
      this.#database.exec('begin immediate');
      try {
        for (const { jobs } of batch) {
          let added = 0;
          for (const job of jobs) {
            const now = this.#now();
            const result = insert.run(
              randomUUID(),
              job.encounterId,
              job.source,
              job.versionId ?? null,
              job.kind ?? null,
              now,
              now,
            );
            added += Number(result.changes);
          }
          counts.push(added);
        }
        this.#database.exec('commit');
      } catch (error) {
        this.#database.exec('rollback');
        throw error;
      }
    } catch (error) {
      for (const waiting of batch) waiting.reject(error);
      return;
    }
    batch.forEach((waiting, index) => {
      waiting.resolve({ added: counts[index] });
    });
  }

  /**
   * At most one job per encounter runs at a time, whatever its source or kind: two subscriptions
   * delivering the same version, or a CDS Hooks call beside a notification, would otherwise run two
   * full retrievals side by side. A job whose encounter is busy stays pending (not failed, not lost)
   * and is handed out once the running one settles or its lease runs out; by then the completed-work
   * ledger usually lets it skip. One UPDATE statement, so the check and the claim are one write, also
   * between processes sharing the file.
   */
  async claim(workerId: string): Promise<EncounterJob | undefined> {
    const now = this.#now();
    this.#claim ??= this.#database.prepare(
      `update jobs set status = 'running', attempts = attempts + 1, lease_until = :leaseUntil, claimed_at = :now, worker_id = :workerId
       where id = (
         -- Two index-friendly halves, each taking its own first row: an OR, or one sort over both,
         -- would walk every waiting job on each claim.
         select id from (
           select * from (
             select id, run_at from jobs candidate
             where status = 'pending' and run_at <= :now
               and not exists (${liveJobOfSameEncounter})
             order by run_at limit 1)
           union all
           select * from (
             select id, run_at from jobs candidate
             where status = 'running' and lease_until < :now
               and not exists (${liveJobOfSameEncounter})
             order by run_at limit 1)
         )
         order by run_at limit 1
       )
       returning *`,
    );
    const row = this.#claim.get({ leaseUntil: now + this.#policy.leaseMs, workerId, now }) as
      | JobRow
      | undefined;
    return row ? toJob(row) : undefined;
  }

  #claim: StatementSync | undefined;

  #completedSincePurge = 0;

  async complete(jobId: string, outcome: string): Promise<void> {
    // Finished jobs are kept a week for listings, then purged so the file does not grow forever.
    if (++this.#completedSincePurge >= 1_000) {
      this.#completedSincePurge = 0;
      this.#database
        .prepare(`delete from jobs where status = 'done' and finished_at < ?`)
        .run(this.#now() - 7 * 24 * 3600 * 1000);
    }
    this.#database
      .prepare(
        `update jobs set status = 'done', outcome = ?, lease_until = null, finished_at = ?, last_error = null where id = ?`,
      )
      .run(outcome, this.#now(), jobId);
  }

  async fail(jobId: string, error: string, decision: FailureDecision): Promise<JobStatus> {
    const row = this.#database.prepare('select attempts from jobs where id = ?').get(jobId) as
      | { attempts: number }
      | undefined;
    if (!row) return 'failed';
    const exhausted = !decision.retryable || row.attempts >= this.#policy.maxAttempts;
    if (exhausted) {
      this.#database
        .prepare(
          `update jobs set status = 'failed', last_error = ?, lease_until = null, finished_at = ? where id = ?`,
        )
        .run(error.slice(0, 2000), this.#now(), jobId);
      return 'failed';
    }
    const delay = nextDelayMs(this.#policy, row.attempts, decision.retryAfterMs);
    try {
      this.#database
        .prepare(
          `update jobs set status = 'pending', last_error = ?, lease_until = null, run_at = ? where id = ?`,
        )
        .run(error.slice(0, 2000), this.#now() + delay, jobId);
    } catch {
      // A newer job for the same encounter is already waiting: it will do the work, this one can end.
      this.#database
        .prepare(
          `update jobs set status = 'done', outcome = 'superseded', lease_until = null, finished_at = ? where id = ?`,
        )
        .run(this.#now(), jobId);
      return 'done';
    }
    return 'pending';
  }

  get leaseRenewalMs(): number {
    return Math.max(1, Math.floor(this.#policy.leaseMs / 3));
  }

  /**
   * Only while this worker holds this attempt (a claim by another worker is a new attempt), and not past
   * maxJobMs since the claim: a run that hangs then loses its job after one more lease, as with pg-boss. A
   * lease that ran out unclaimed (a renewal delayed by a busy event loop) is renewed, unless another job of
   * the encounter started meanwhile: reviving it would run the two side by side.
   */
  async renewLease(jobId: string, attempt: number, workerId: string): Promise<boolean> {
    const now = this.#now();
    this.#renew ??= this.#database.prepare(
      `update jobs set lease_until = :leaseUntil
       where id = :jobId and status = 'running' and attempts = :attempt and worker_id = :workerId
         and coalesce(claimed_at, :now) > :now - :maxJobMs
         and not exists (select 1 from jobs running where running.encounter_id = jobs.encounter_id
           and running.id != jobs.id and running.status = 'running' and running.lease_until >= :now)`,
    );
    const result = this.#renew.run({
      leaseUntil: now + this.#policy.leaseMs,
      jobId,
      attempt,
      workerId,
      now,
      maxJobMs: this.#policy.maxJobMs ?? defaultMaxJobMs,
    });
    return Number(result.changes) > 0;
  }

  #renew: StatementSync | undefined;

  async release(jobId: string): Promise<void> {
    try {
      this.#database
        .prepare(
          `update jobs set status = 'pending', attempts = max(0, attempts - 1), lease_until = null where id = ? and status = 'running'`,
        )
        .run(jobId);
    } catch {
      this.#database
        .prepare(`update jobs set status = 'done', outcome = 'superseded' where id = ?`)
        .run(jobId);
    }
  }

  async retry(jobId: string): Promise<boolean> {
    try {
      const result = this.#database
        .prepare(
          `update jobs set status = 'pending', attempts = 0, run_at = ?, finished_at = null where id = ? and status = 'failed'`,
        )
        .run(this.#now(), jobId);
      return Number(result.changes) > 0;
    } catch {
      return false;
    }
  }

  async list(status: JobStatus, limit = 100): Promise<EncounterJob[]> {
    const rows = this.#database
      .prepare('select * from jobs where status = ? order by created_at desc limit ?')
      .all(status, limit) as unknown as JobRow[];
    return rows.map(toJob);
  }

  async counts(): Promise<QueueCounts> {
    const counts: QueueCounts = { pending: 0, running: 0, done: 0, failed: 0 };
    const rows = this.#database
      .prepare('select status, count(*) as total from jobs group by status')
      .all() as {
      status: JobStatus;
      total: number;
    }[];
    for (const row of rows) counts[row.status] = Number(row.total);
    return counts;
  }

  async hasCompleted(workKey: string): Promise<boolean> {
    return (
      this.#database.prepare('select 1 from completed_work where work_key = ?').get(workKey) !== undefined
    );
  }

  async recordCompleted(workKey: string, outcome: string): Promise<void> {
    this.#database
      .prepare(
        'insert into completed_work (work_key, outcome, completed_at) values (?, ?, ?) on conflict do nothing',
      )
      .run(workKey, outcome, this.#now());
  }

  async close(): Promise<void> {
    if (this.#database.isOpen) this.#database.close();
  }
}
