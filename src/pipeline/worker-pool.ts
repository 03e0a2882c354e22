import { hostname } from 'node:os';
import { isAuthenticationFailure } from '../../fhir/authentication-health.ts';
import { FhirRequestError, normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import type { Logger } from '../log.ts';
import type { EncounterJob, JobQueue } from '../queue/job-queue.ts';

/**
 * Runs jobs from the queue with a fixed concurrency. On stop it takes no new jobs, lets the
 * in-flight ones finish within a grace period, and hands back any still running so another
 * worker (or the next start) picks them up. Errors decide between retry and dead-letter.
 * While a job runs its lease is renewed, so a draft slower than one lease (a 27B model on CPU)
 * is not handed to a second worker; a job whose lease was lost anyway is abandoned unrecorded.
 */
export interface WorkerPoolOptions {
  queue: JobQueue;
  concurrency: number;
  pollIntervalMs: number;
  logger: Logger;
  process(job: EncounterJob, signal: AbortSignal): Promise<string>;
  /** Observers for metrics. */
  onSettled?: (job: EncounterJob, outcome: 'done' | 'retry' | 'failed', durationMs: number) => void;
}

export class WorkerPool {
  readonly #options: WorkerPoolOptions;
  readonly #workerId = `${hostname()}:${process.pid}`;
  readonly #inFlight = new Map<
    string,
    { job: EncounterJob; done: Promise<void>; stopRenewing: () => void }
  >();
  readonly #abort = new AbortController();
  #loops: Promise<void>[] = [];
  #stopping = false;
  /** One waker per idle worker: a nudge wakes them all, not just the last one to go idle. */
  readonly #wakers = new Set<() => void>();
  /** Jobs handed back on stop: whatever their run ends with later is not recorded. */
  readonly #released = new Set<string>();

  constructor(options: WorkerPoolOptions) {
    this.#options = options;
  }

  start(): void {
    this.#loops = Array.from({ length: this.#options.concurrency }, () => this.#loop());
  }

  /** Wakes idle workers at once (new jobs were queued) instead of waiting for the next poll. */
  nudge(): void {
    for (const wake of [...this.#wakers]) wake();
  }

  get inFlight(): number {
    return this.#inFlight.size;
  }

  async #idle(): Promise<void> {
    await new Promise<void>((resolve) => {
      const wake = () => {
        clearTimeout(timer);
        this.#wakers.delete(wake);
        resolve();
      };
      const timer = setTimeout(wake, this.#options.pollIntervalMs);
      this.#wakers.add(wake);
    });
  }

  async #loop(): Promise<void> {
    while (!this.#stopping) {
      let job: EncounterJob | undefined;
      try {
        job = await this.#options.queue.claim(this.#workerId);
      } catch (error) {
        this.#options.logger.error({ err: normalizeOperationOutcome(error).message }, 'queue-claim-failed');
      }
      if (!job) {
        await this.#idle();
        continue;
      }
      const run = new AbortController();
      const stopRenewing = this.#keepLeased(job, run);
      const done = this.#run(job, AbortSignal.any([this.#abort.signal, run.signal])).finally(stopRenewing);
      this.#inFlight.set(job.id, { job, done, stopRenewing });
      await done;
      this.#inFlight.delete(job.id);
      this.#released.delete(job.id); // its run is over: nothing left to keep unrecorded
    }
  }

  /**
   * Renews the job's lease every leaseRenewalMs until the returned function is called. A renewal that fails
   * (the database briefly away) is tried again at the next turn, still within the lease. When the queue
   * refuses (the lease ran out and the job was handed out again, or the run passed queue.maxJobMs), the run
   * is aborted and its outcome not recorded: the job is another attempt's now, or will be after this lease.
   */
  #keepLeased(job: EncounterJob, run: AbortController): () => void {
    const { queue, logger } = this.#options;
    const every = queue.leaseRenewalMs;
    if (every === undefined) return () => {};
    let stopped = false;
    let timer: NodeJS.Timeout | undefined;
    const renew = async () => {
      let held = true;
      try {
        held = await queue.renewLease(job.id, job.attempts, this.#workerId);
      } catch (error) {
        logger.warn(
          { jobId: job.id, attempt: job.attempts, err: normalizeOperationOutcome(error).message },
          'job-lease-renewal-failed',
        );
      }
      if (stopped) return;
      if (!held) {
        this.#released.add(job.id);
        logger.warn({ jobId: job.id, encounterId: job.encounterId, attempt: job.attempts }, 'job-lease-lost');
        run.abort(new Error('the job lease could not be renewed'));
        return;
      }
      schedule();
    };
    const schedule = () => {
      timer = setTimeout(() => void renew(), every);
    };
    schedule();
    return () => {
      stopped = true;
      clearTimeout(timer);
    };
  }

  async #run(job: EncounterJob, signal: AbortSignal): Promise<void> {
    const { queue, logger } = this.#options;
    const startedAt = performance.now();
    try {
      const outcome = await this.#options.process(job, signal);
      if (this.#released.has(job.id)) return;
      await queue.complete(job.id, outcome);
      logger.info(
        { jobId: job.id, encounterId: job.encounterId, outcome, attempt: job.attempts },
        'job-done',
      );
      this.#options.onSettled?.(job, 'done', performance.now() - startedAt);
    } catch (caught) {
      if (this.#released.has(job.id)) return; // handed back on stop: the next worker retries it
      const error = normalizeOperationOutcome(caught);
      const status = await queue.fail(job.id, error.message, {
        // An expired or revoked credential is fixed outside the job (a new token, a registration), so the job waits
        // with backoff for that instead of being dead-lettered at its first attempt.
        retryable: error.isRetryable || isAuthenticationFailure(error),
        retryAfterMs: error.retryAfterSeconds !== undefined ? error.retryAfterSeconds * 1000 : undefined,
      });
      const level = status === 'failed' ? 'error' : 'warn';
      // The message names the request (interaction, type, status, capped diagnostics) and never a resource body.
      const request =
        error instanceof FhirRequestError
          ? { interaction: error.request.interaction, resourceType: error.request.resourceType }
          : {};
      logger[level](
        {
          jobId: job.id,
          encounterId: job.encounterId,
          attempt: job.attempts,
          status: error.status,
          ...request,
          error: error.message,
          next: status,
        },
        status === 'failed' ? 'job-dead-lettered' : 'job-will-retry',
      );
      this.#options.onSettled?.(job, status === 'failed' ? 'failed' : 'retry', performance.now() - startedAt);
    }
  }

  /** Stops taking jobs; waits up to graceMs for running ones, then releases what is left. */
  async stop(graceMs = 10_000): Promise<void> {
    this.#stopping = true;
    this.nudge();
    const running = [...this.#inFlight.values()];
    const finished = Promise.all(running.map((entry) => entry.done)).then(() => true);
    const timedOut = new Promise<boolean>((resolve) => setTimeout(() => resolve(false), graceMs).unref());
    if (await Promise.race([finished, timedOut])) {
      await Promise.allSettled(this.#loops);
      return;
    }
    // Jobs still running after the grace period go back to the queue now; their runs are abandoned
    // (not awaited: a step that ignores the abort signal must not hold the shutdown).
    this.#abort.abort();
    for (const { job, stopRenewing } of this.#inFlight.values()) {
      stopRenewing();
      this.#released.add(job.id);
      await this.#options.queue.release(job.id);
    }
  }
}
