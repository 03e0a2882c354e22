/**
 * The durable queue between event intake and the workers. Two adapters share this port:
 * node:sqlite (embedded, one process) and PostgreSQL through pg-boss (several replicas).
 * Delivery is at least once; the FHIR write's conditional create makes the effect once.
 */
export type DraftKindHint = 'progress-summary' | 'previsit-briefing';

export interface EncounterJobInput {
  encounterId: string;
  /** Where the event came from (backport-rest-hook, hapi-rest-hook, medplum, poll, cds-hooks, demo...). */
  source: string;
  /** The encounter version the event named, when known; the worker re-reads the Encounter anyway. */
  versionId?: string;
  /** Forces a kind (CDS Hooks encounter-start); otherwise the worker derives it from the encounter status. */
  kind?: DraftKindHint;
}

export type JobStatus = 'pending' | 'running' | 'done' | 'failed';

export interface EncounterJob extends EncounterJobInput {
  id: string;
  status: JobStatus;
  attempts: number;
  createdAt: string;
  runAt: string;
  lastError?: string;
  outcome?: string;
}

export interface FailureDecision {
  /** Whether another attempt may succeed. Non-retryable failures go straight to the dead-letter list. */
  retryable: boolean;
  /** Honours a server's Retry-After when larger than the computed backoff. */
  retryAfterMs?: number;
}

export interface QueueCounts {
  pending: number;
  running: number;
  done: number;
  failed: number;
}

/**
 * Work already done, keyed on (encounter id, versionId, kind, configuration version): a repeated
 * event for the same encounter version is a no-op. Kept beside the jobs so it shares their durability.
 */
export interface CompletedWorkLedger {
  hasCompleted(workKey: string): Promise<boolean>;
  recordCompleted(workKey: string, outcome: string): Promise<void>;
}

export interface WorkKeyParts {
  encounterId: string;
  versionId: string | undefined;
  kind: string;
  configurationVersion: string;
}

export function workKey(parts: WorkKeyParts): string {
  return [parts.encounterId, parts.versionId ?? '-', parts.kind, parts.configurationVersion].join('|');
}

export interface JobQueue extends CompletedWorkLedger {
  /**
   * Records the jobs. An encounter that already has a job waiting (not yet started) is not queued
   * twice: the waiting job will re-read the encounter and see the latest state anyway.
   */
  enqueue(jobs: EncounterJobInput[]): Promise<{ added: number }>;
  /**
   * Takes the next due job and leases it to this worker; a job whose lease ran out is handed out again.
   * Never a job whose encounter already has a job running under a live lease (any source, any kind):
   * the work key is only known once the Encounter is read, so the encounter is what keeps two jobs
   * from doing the same work side by side. Such a job waits and is handed out after the running one.
   */
  claim(workerId: string): Promise<EncounterJob | undefined>;
  complete(jobId: string, outcome: string): Promise<void>;
  /** Schedules another attempt with backoff, or moves the job to the dead-letter list. Returns the new status. */
  fail(jobId: string, error: string, decision: FailureDecision): Promise<JobStatus>;
  /**
   * How often a worker renews the lease of a job it runs (a fraction of the lease, so one late renewal
   * does not lose it); undefined when this queue cannot renew, and a job then has one lease in all.
   */
  readonly leaseRenewalMs: number | undefined;
  /**
   * Extends the lease of a job this worker still holds on this attempt, so a job that runs longer than one
   * lease is not handed to another worker. False when the attempt is no longer this worker's (settled,
   * released, or handed out again after its lease ran out): a worker that crashed stops renewing, and its
   * job is handed out again after one lease.
   */
  renewLease(jobId: string, attempt: number, workerId: string): Promise<boolean>;
  /** Gives a leased job back untouched (graceful shutdown). */
  release(jobId: string): Promise<void>;
  /** Moves a dead-lettered job back to pending. */
  retry(jobId: string): Promise<boolean>;
  list(status: JobStatus, limit?: number): Promise<EncounterJob[]>;
  counts(): Promise<QueueCounts>;
  close(): Promise<void>;
}

export interface BackoffPolicy {
  maxAttempts: number;
  backoffBaseMs: number;
  backoffMaxMs: number;
  leaseMs: number;
  /** The longest a job may run however often its lease is renewed; defaultMaxJobMs unless set. */
  maxJobMs?: number;
}

/** A bound on a job's whole run, so a run that hangs while its worker lives does not hold the job for ever. */
export const defaultMaxJobMs = 2 * 3600 * 1000;

/** Exponential backoff with full jitter, never shorter than what the server asked for. */
export function nextDelayMs(
  policy: BackoffPolicy,
  attempts: number,
  retryAfterMs = 0,
  random = Math.random,
): number {
  const ceiling = Math.min(policy.backoffMaxMs, policy.backoffBaseMs * 2 ** Math.max(0, attempts - 1));
  return Math.max(retryAfterMs, Math.round(ceiling / 2 + (random() * ceiling) / 2));
}
