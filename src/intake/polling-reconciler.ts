import type { Appointment, Encounter } from 'fhir/r4.js';
import cron, { type ScheduledTask } from 'node-cron';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { Leadership } from '../storage/leadership.ts';
import type { EventIntake } from './event-intake.ts';
import type { IntakeStateStore } from './intake-state-store.ts';

/**
 * The polling reconciler: `Encounter?_lastUpdated=gt<cursor - overlap>&_sort=_lastUpdated`, every
 * page, each (id, versionId) queued once, the cursor persisted. The overlap window catches updates
 * committed late (a transaction that began before the cursor but became visible after it) and clock
 * skew. It is a mode of its own (servers without subscriptions: Epic, Oracle Health) and the
 * recovery path for gaps, resets, silent subscriptions and empty payloads. Runs never overlap;
 * requests during a run coalesce into one more run. With replicas, only the leader polls on the
 * schedule, and every run (scheduled or asked for by intake on any replica) holds the cursor alone:
 * one cursor, advanced by one replica at a time. With the pre-visit intake on, each run also looks for
 * Appointments booked or changed since its own cursor (`Appointment?status=booked&_lastUpdated=gt...`) and hands
 * them to the intake, which reads each again and invites once per Appointment.
 */
export interface PollingReconcilerOptions {
  fhir: FhirClient;
  store: IntakeStateStore;
  intake: EventIntake;
  logger: Logger;
  metrics?: ServiceMetrics;
  overlapMs: number;
  pageSize: number;
  initialLookbackMs: number;
  /** Whether this replica polls on the schedule; absent: it does. */
  leadership?: Leadership;
  now?: () => number;
}

export interface ReconcileResult {
  seen: number;
  queued: number;
  cursor: string;
}

const cursorName = 'Encounter';
const appointmentCursorName = 'Appointment';

export class PollingReconciler {
  readonly #options: PollingReconcilerOptions;
  readonly #now: () => number;
  #running: Promise<ReconcileResult> | undefined;
  #again: { reason: string; promise: Promise<ReconcileResult> } | undefined;
  #task: ScheduledTask | undefined;
  runs = 0;

  constructor(options: PollingReconcilerOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  /** Polls on the cron schedule until stop(). */
  start(expression: string): void {
    if (!cron.validate(expression))
      throw new Error(`intake.polling.cron is not a cron expression: ${expression}`);
    this.#task = cron.schedule(expression, () => {
      if (this.#options.leadership && !this.#options.leadership.isLeader) return;
      void this.request('schedule').catch(() => undefined);
    });
  }

  /** Whether polling runs on a schedule. */
  get scheduled(): boolean {
    return this.#task !== undefined;
  }

  /** Stops the schedule only; requests still run. */
  async unschedule(): Promise<void> {
    await this.#task?.stop();
    this.#task = undefined;
  }

  /** Fire-and-forget trigger from intake (gap, reset, empty payload); errors are logged. */
  trigger(reason: string): void {
    void this.request(reason).catch(() => undefined);
  }

  /** Runs now, or once more after the current run when one is in progress. */
  request(reason: string): Promise<ReconcileResult> {
    if (!this.#running) {
      this.#running = this.#run(reason).finally(() => {
        this.#running = undefined;
      });
      return this.#running;
    }
    if (this.#again) return this.#again.promise;
    const current = this.#running;
    const promise = current
      .catch(() => undefined)
      .then(() => {
        this.#again = undefined;
        return this.request(reason);
      });
    this.#again = { reason, promise };
    return promise;
  }

  #run(reason: string): Promise<ReconcileResult> {
    return this.#options.store.exclusive('poll-cursor', () => this.#poll(reason));
  }

  async #poll(reason: string): Promise<ReconcileResult> {
    const { fhir, store, intake, logger, metrics } = this.#options;
    this.runs++;
    const saved = await store.cursor(cursorName);
    const cursor = saved ?? new Date(this.#now() - this.#options.initialLookbackMs).toISOString();
    const since = new Date(Date.parse(cursor) - this.#options.overlapMs).toISOString();
    try {
      const encounters = await fhir.search<Encounter>('Encounter', {
        _lastUpdated: `gt${since}`,
        _sort: '_lastUpdated',
        _count: this.#options.pageSize,
      });
      let newest = Date.parse(cursor);
      const events: { encounterId: string; versionId?: string }[] = [];
      for (const encounter of encounters) {
        if (!encounter.id) continue;
        const lastUpdated = encounter.meta?.lastUpdated ? Date.parse(encounter.meta.lastUpdated) : Number.NaN;
        const version = encounter.meta?.versionId ?? encounter.meta?.lastUpdated;
        // Without a version or a timestamp there is no way to tell an update from a repeat: queue it.
        const isNew =
          version === undefined ||
          (await store.markPolled(
            encounter.id,
            version,
            Number.isFinite(lastUpdated) ? new Date(lastUpdated).toISOString() : since,
          ));
        if (isNew)
          events.push({
            encounterId: encounter.id,
            ...(encounter.meta?.versionId ? { versionId: encounter.meta.versionId } : {}),
          });
        if (Number.isFinite(lastUpdated)) newest = Math.max(newest, lastUpdated);
      }
      const queued = await intake.acceptEncounters(events, 'poll');
      const nextCursor = new Date(newest).toISOString();
      await store.saveCursor(cursorName, nextCursor);
      await store.prunePolled(new Date(newest - 2 * this.#options.overlapMs).toISOString());
      await this.#pollAppointments(since);
      metrics?.reconciliations.inc({ reason, outcome: 'done' });
      logger.info({ reason, seen: encounters.length, new: events.length, queued }, 'reconcile-done');
      return { seen: encounters.length, queued, cursor: nextCursor };
    } catch (error) {
      metrics?.reconciliations.inc({ reason, outcome: 'failed' });
      logger.warn({ reason, error: normalizeOperationOutcome(error).message }, 'reconcile-failed');
      throw error;
    }
  }

  /**
   * Booked Appointments updated since their cursor (minus the overlap), for the intake's invitations. A server
   * that refuses the search leaves the Encounter poll as it is: invitations then come from planned Encounters.
   */
  async #pollAppointments(encounterSince: string): Promise<void> {
    const { fhir, store, intake, logger } = this.#options;
    if (!intake.handlesAppointments) return;
    try {
      const saved = await store.cursor(appointmentCursorName);
      const since = saved
        ? new Date(Date.parse(saved) - this.#options.overlapMs).toISOString()
        : encounterSince;
      const appointments = await fhir.search<Appointment>('Appointment', {
        status: 'booked',
        _lastUpdated: `gt${since}`,
        _sort: '_lastUpdated',
        _count: this.#options.pageSize,
      });
      let newest = Date.parse(saved ?? since);
      for (const appointment of appointments) {
        const lastUpdated = Date.parse(appointment.meta?.lastUpdated ?? '');
        if (Number.isFinite(lastUpdated)) newest = Math.max(newest, lastUpdated);
      }
      intake.acceptAppointments(
        appointments.flatMap((appointment) => (appointment.id ? [appointment.id] : [])),
        'poll',
      );
      await store.saveCursor(appointmentCursorName, new Date(newest).toISOString());
    } catch (error) {
      logger.warn({ error: normalizeOperationOutcome(error).message }, 'appointment-poll-failed');
    }
  }

  async stop(): Promise<void> {
    await this.#task?.stop();
    this.#task = undefined;
    await this.#running?.catch(() => undefined);
  }
}
