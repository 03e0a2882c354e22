import { type JobWithMetadata, PgBoss } from 'pg-boss';
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

/**
 * The shared queue for several replicas: PostgreSQL through pg-boss. pg-boss does the hard parts
 * (SKIP LOCKED claims, lease expiry of jobs held by a crashed worker, retries, retention); this adapter
 * maps the port onto it. Waiting jobs collapse per encounter through the `short` policy and a
 * singleton key; running jobs are kept to one per encounter through pg-boss groups (the encounter id
 * is the group, claimed with a group concurrency of 1). Our own backoff (honouring Retry-After) replaces pg-boss's on each retry, so both
 * adapters behave the same. A non-retryable failure is cancelled, which this port lists as failed.
 */
export interface PgBossQueueOptions extends BackoffPolicy {
  connectionString: string;
  /** PostgreSQL schema pg-boss installs into. */
  schema?: string;
  queueName?: string;
  /** How often pg-boss looks for expired leases; tests use 1 s. */
  superviseIntervalSeconds?: number;
}

/** pg-boss refuses heartbeats under 10 s, and bounds a job's run at 24 h. */
const shortestHeartbeatSeconds = 10;
const longestExpirySeconds = 24 * 3600;

/**
 * The lease as pg-boss knows it. A lease of 10 s or more is a heartbeat (heartbeatSeconds) that the worker
 * renews with touch(), and expireInSeconds becomes the upper bound on a job's whole run (maxJobMs). A
 * shorter lease cannot be a heartbeat in pg-boss, so it stays what it was before renewals existed: the
 * job's whole run (expireInSeconds), never renewed; a job that runs longer is handed out again.
 */
export function leaseSettings(options: Pick<PgBossQueueOptions, 'leaseMs' | 'maxJobMs'>): {
  heartbeatSeconds: number | null;
  expireInSeconds: number;
} {
  const leaseSeconds = Math.max(1, Math.ceil(options.leaseMs / 1000));
  if (leaseSeconds < shortestHeartbeatSeconds)
    return { heartbeatSeconds: null, expireInSeconds: leaseSeconds };
  const maxJobSeconds = Math.ceil((options.maxJobMs ?? defaultMaxJobMs) / 1000);
  return {
    heartbeatSeconds: leaseSeconds,
    expireInSeconds: Math.min(longestExpirySeconds, Math.max(leaseSeconds, maxJobSeconds)),
  };
}

interface JobData {
  encounterId: string;
  source: string;
  versionId?: string;
  kind?: EncounterJob['kind'];
}

interface JobRow {
  id: string;
  data: JobData;
  state: string;
  retry_count: number;
  created_on: Date;
  start_after: Date;
  output: { outcome?: string; error?: string; message?: string } | null;
}

const statesByStatus: Record<JobStatus, string[]> = {
  pending: ['created', 'retry'],
  running: ['active'],
  done: ['completed'],
  failed: ['failed', 'cancelled'],
};

function statusOf(state: string): JobStatus {
  for (const [status, states] of Object.entries(statesByStatus)) {
    if (states.includes(state)) return status as JobStatus;
  }
  return 'failed';
}

const identifierPattern = /^[a-z_][a-z0-9_]{0,62}$/;

export class PgBossJobQueue implements JobQueue {
  readonly #boss: PgBoss;
  readonly #policy: BackoffPolicy;
  readonly #name: string;
  readonly #schema: string;
  /** The attempt each job this process holds is on, so settling only touches that attempt. */
  readonly #held = new Map<string, number>();
  readonly leaseRenewalMs: number | undefined;

  private constructor(boss: PgBoss, options: PgBossQueueOptions) {
    this.#boss = boss;
    this.#policy = options;
    const { heartbeatSeconds } = leaseSettings(options);
    // Three heartbeats per lease, so one late or lost touch does not fail a running job.
    this.leaseRenewalMs = heartbeatSeconds === null ? undefined : Math.floor((heartbeatSeconds * 1000) / 3);
    this.#name = options.queueName ?? 'encounter-jobs';
    this.#schema = options.schema ?? 'pgboss';
  }

  static async open(options: PgBossQueueOptions): Promise<PgBossJobQueue> {
    const schema = options.schema ?? 'pgboss';
    if (!identifierPattern.test(schema)) throw new Error(`not a plain PostgreSQL schema name: ${schema}`);
    const boss = new PgBoss({
      connectionString: options.connectionString,
      schema,
      // Lease expiry runs in the monitor pass: both timers decide how soon a crashed worker's job returns.
      superviseIntervalSeconds: options.superviseIntervalSeconds ?? 5,
      monitorIntervalSeconds: options.superviseIntervalSeconds ?? 5,
      max: 4,
    });
    boss.on('error', () => {
      // Connection blips surface on the next call; the worker pool logs and retries those.
    });
    await boss.start();
    const queue = new PgBossJobQueue(boss, options);
    const lease = leaseSettings(options);
    const queueOptions = {
      policy: 'short' as const,
      retryLimit: Math.max(0, options.maxAttempts - 1),
      retryDelay: Math.max(1, Math.round(options.backoffBaseMs / 1000)),
      retryBackoff: true,
      retryDelayMax: Math.max(1, Math.round(options.backoffMaxMs / 1000)),
      expireInSeconds: lease.expireInSeconds,
      ...(lease.heartbeatSeconds === null ? {} : { heartbeatSeconds: lease.heartbeatSeconds }),
      deleteAfterSeconds: 7 * 24 * 3600,
    };
    if (!(await boss.getQueue(queue.#name))) {
      try {
        await boss.createQueue(queue.#name, queueOptions);
      } catch (error) {
        // Another replica created it at the same moment.
        if (!(await boss.getQueue(queue.#name))) throw error;
      }
    } else {
      const { policy: _policy, ...updatable } = queueOptions;
      // null clears a heartbeat an earlier leaseMs set (plans.updateQueue); the option's type says number only.
      const heartbeatSeconds = lease.heartbeatSeconds as number;
      await boss.updateQueue(queue.#name, { ...updatable, heartbeatSeconds });
    }
    await createLedgerTable(boss, schema);
    // Jobs queued by an earlier version carry no group, and a job without one is claimed regardless of
    // what else runs for its encounter.
    await boss.getDb().executeSql(
      `update ${schema}.job set group_id = data->>'encounterId'
          where name = $1 and group_id is null and state in ('created', 'retry', 'active') and data ? 'encounterId'`,
      [queue.#name],
    );
    // A job takes its lease settings from the queue when it is sent: jobs still waiting from before a change
    // of leaseMs or maxJobMs take the new ones, so a long job queued earlier is not cut off at the old lease.
    await boss.getDb().executeSql(
      `update ${schema}.job set expire_seconds = $2, heartbeat_seconds = $3
          where name = $1 and state in ('created', 'retry')`,
      [queue.#name, lease.expireInSeconds, lease.heartbeatSeconds],
    );
    return queue;
  }

  #singletonKey(job: EncounterJobInput): string {
    // A clinician's regeneration request never folds into an event job (which the ledger could skip).
    return `${job.encounterId}|${job.kind ?? ''}${job.source === 'regenerate' ? '|regenerate' : ''}`;
  }

  async enqueue(jobs: EncounterJobInput[]): Promise<{ added: number }> {
    let added = 0;
    for (const job of jobs) {
      const data: JobData = {
        encounterId: job.encounterId,
        source: job.source,
        ...(job.versionId ? { versionId: job.versionId } : {}),
        ...(job.kind ? { kind: job.kind } : {}),
      };
      const id = await this.#boss.send(this.#name, data, {
        singletonKey: this.#singletonKey(job),
        group: { id: job.encounterId },
      });
      if (id) added++;
    }
    return { added };
  }

  /**
   * At most one job per encounter runs at a time, across every replica: pg-boss skips a job whose
   * group (its encounter) already has an active job. That check reads committed rows, so two claims
   * at the same moment could each see the other's encounter idle and take a job of it each; claims
   * therefore take a transaction-scoped advisory lock first, one per queue, and run one after the
   * other (a claim is one short statement). A job whose encounter is busy stays queued and is handed
   * out once the running one settles or its lease runs out.
   */
  claim(_workerId: string): Promise<EncounterJob | undefined> {
    // This process's claims queue up here rather than each holding a pooled connection while it waits
    // for the lock: the pool stays free for the lock holder and for settling jobs.
    const claimed = this.#lastClaim.then(() => this.#claimNext());
    this.#lastClaim = claimed.catch(() => undefined);
    return claimed;
  }

  #lastClaim: Promise<unknown> = Promise.resolve();

  async #claimNext(): Promise<EncounterJob | undefined> {
    const database = this.#boss.getDb();
    if (!database.beginTransaction) throw new Error('the pg-boss database adapter cannot open a transaction');
    const transaction = await database.beginTransaction();
    let job: JobWithMetadata<JobData> | undefined;
    try {
      await transaction.db.executeSql('select pg_advisory_xact_lock(hashtext($1))', [
        `${this.#schema}.${this.#name}:claim`,
      ]);
      [job] = await this.#boss.fetch<JobData>(this.#name, {
        batchSize: 1,
        includeMetadata: true,
        groupConcurrency: 1,
        db: transaction.db,
      });
      await transaction.commit();
    } catch (error) {
      await transaction.rollback();
      throw error;
    }
    if (!job) return undefined;
    this.#held.set(job.id, job.retryCount);
    return {
      id: job.id,
      encounterId: job.data.encounterId,
      source: job.data.source,
      ...(job.data.versionId ? { versionId: job.data.versionId } : {}),
      ...(job.data.kind ? { kind: job.data.kind } : {}),
      status: 'running',
      attempts: job.retryCount + 1,
      createdAt: new Date(job.createdOn).toISOString(),
      runAt: new Date(job.startAfter).toISOString(),
    };
  }

  #attempt(jobId: string): string | { id: string; retryCount: number } {
    const retryCount = this.#held.get(jobId);
    this.#held.delete(jobId);
    return retryCount === undefined ? jobId : { id: jobId, retryCount };
  }

  async complete(jobId: string, outcome: string): Promise<void> {
    await this.#boss.complete(this.#name, this.#attempt(jobId), { outcome });
  }

  async #state(jobId: string): Promise<JobRow | undefined> {
    const { rows } = await this.#boss
      .getDb()
      .executeSql(
        `select id, data, state, retry_count, created_on, start_after, output from ${this.#schema}.job where name = $1 and id = $2`,
        [this.#name, jobId],
      );
    return rows[0] as JobRow | undefined;
  }

  async fail(jobId: string, error: string, decision: FailureDecision): Promise<JobStatus> {
    const retryCount = this.#held.get(jobId) ?? 0;
    await this.#boss.fail(this.#name, this.#attempt(jobId), { error: error.slice(0, 2000) });
    const row = await this.#state(jobId);
    if (!row) return 'failed';
    if (row.state !== 'retry') return statusOf(row.state);
    if (!decision.retryable) {
      await this.#boss.cancel(this.#name, jobId);
      return 'failed';
    }
    const delay = nextDelayMs(this.#policy, retryCount + 1, decision.retryAfterMs);
    await this.#boss.update(this.#name, undefined, { id: jobId, startAfter: new Date(Date.now() + delay) });
    return 'pending';
  }

  /**
   * A heartbeat on this attempt only (pg-boss fences touch() on the retry count). Without heartbeats (a lease
   * under 10 s) there is nothing to extend, and leaseRenewalMs tells the worker pool not to call this.
   */
  async renewLease(jobId: string, attempt: number, _workerId: string): Promise<boolean> {
    const result = await this.#boss.touch(this.#name, { id: jobId, retryCount: attempt - 1 });
    return ((result as { affected?: number }).affected ?? 0) > 0;
  }

  async release(jobId: string): Promise<void> {
    // pg-boss has no "un-fetch": cancel and resume puts the job back as created, attempts kept.
    this.#held.delete(jobId);
    await this.#boss.cancel(this.#name, jobId);
    await this.#boss.resume(this.#name, jobId);
  }

  async retry(jobId: string): Promise<boolean> {
    const row = await this.#state(jobId);
    if (row?.state === 'failed') {
      const result = await this.#boss.retry(this.#name, jobId);
      return ((result as { affected?: number }).affected ?? 0) > 0;
    }
    if (row?.state === 'cancelled') {
      const result = await this.#boss.resume(this.#name, jobId);
      return ((result as { affected?: number }).affected ?? 0) > 0;
    }
    return false;
  }

  async list(status: JobStatus, limit = 100): Promise<EncounterJob[]> {
    const { rows } = await this.#boss.getDb().executeSql(
      `select id, data, state, retry_count, created_on, start_after, output from ${this.#schema}.job
         where name = $1 and state::text = any($2::text[]) order by created_on desc limit $3`,
      [this.#name, statesByStatus[status], limit],
    );
    return (rows as JobRow[]).map((row) => {
      const lastError = row.output?.error ?? row.output?.message;
      return {
        id: row.id,
        encounterId: row.data.encounterId,
        source: row.data.source,
        ...(row.data.versionId ? { versionId: row.data.versionId } : {}),
        ...(row.data.kind ? { kind: row.data.kind } : {}),
        status: statusOf(row.state),
        attempts: row.state === 'created' ? 0 : row.retry_count + (row.state === 'retry' ? 0 : 1),
        createdAt: new Date(row.created_on).toISOString(),
        runAt: new Date(row.start_after).toISOString(),
        ...(lastError ? { lastError: String(lastError) } : {}),
        ...(row.output?.outcome ? { outcome: row.output.outcome } : {}),
      };
    });
  }

  async counts(): Promise<QueueCounts> {
    const { rows } = await this.#boss
      .getDb()
      .executeSql(
        `select state::text as state, count(*)::int as total from ${this.#schema}.job where name = $1 group by state`,
        [this.#name],
      );
    const counts: QueueCounts = { pending: 0, running: 0, done: 0, failed: 0 };
    for (const row of rows as { state: string; total: number }[]) counts[statusOf(row.state)] += row.total;
    return counts;
  }

  async hasCompleted(workKey: string): Promise<boolean> {
    const { rows } = await this.#boss
      .getDb()
      .executeSql(`select 1 from ${this.#schema}.completed_work where work_key = $1`, [workKey]);
    return rows.length > 0;
  }

  async recordCompleted(workKey: string, outcome: string): Promise<void> {
    await this.#boss
      .getDb()
      .executeSql(
        `insert into ${this.#schema}.completed_work (work_key, outcome) values ($1, $2) on conflict do nothing`,
        [workKey, outcome],
      );
  }

  async close(): Promise<void> {
    await this.#boss.stop({ graceful: false, close: true });
  }
}

/**
 * The completed-work ledger's table. Replicas of a new deployment open the queue at the same moment, and
 * `create table if not exists` run by two sessions at once can fail on PostgreSQL's catalog (unique violation
 * on pg_type, duplicate table, or "type already exists" for the table's row type, 42710) even though the
 * table then exists: that failure is the other replica's success, so it is checked and let go.
 */
async function createLedgerTable(boss: PgBoss, schema: string): Promise<void> {
  const table = `${schema}.completed_work`;
  try {
    await boss
      .getDb()
      .executeSql(
        `create table if not exists ${table} (work_key text primary key, outcome text not null, completed_at timestamptz not null default now())`,
      );
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code !== '23505' && code !== '42P07' && code !== '42710') throw error;
    const found = (await boss.getDb().executeSql('select to_regclass($1) as name', [table])) as {
      rows: { name: string | null }[];
    };
    if (!found.rows[0]?.name) throw error;
  }
}
