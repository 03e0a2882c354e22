import { isFhirId } from '../../fhir/fhir-id.ts';
import type { ParsedNotification } from '../../fhir/subscription-notification.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { DraftKindHint, EncounterJobInput, JobQueue } from '../queue/job-queue.ts';
import type { CounterObservation, EventCounterTracker } from './event-counter-tracker.ts';

/**
 * Where every source's events meet: Backport notifications (through the counter tracker), classic
 * rest-hooks, Medplum, polling and CDS Hooks. An event naming an Encounter becomes a queued job;
 * an event without a focus (empty payload) becomes one reconcile request. Nothing here calls FHIR:
 * intake answers fast, workers and the reconciler do the reading.
 */
export interface IntakeResult {
  queued: number;
  /** Encounter events recorded (including ones that collapsed into a job already waiting). */
  events: number;
  duplicates: number;
  reconcileRequested: boolean;
}

export interface EventIntakeOptions {
  queue: JobQueue;
  logger: Logger;
  tracker?: EventCounterTracker;
  metrics?: ServiceMetrics;
  /** Asks the reconciler for a run; coalesced there. */
  requestReconcile?: (reason: string) => void;
  onQueued?: (added: number) => void;
  /**
   * A delivery pushed by a FHIR server (not polling, CDS Hooks or the watchdog's own queries): proof that
   * a subscription delivers. `subscription` is the one named, absent for deliveries that name none.
   */
  onDelivery?: (subscription: string | undefined, kind: DeliveryKind) => void;
}

export type DeliveryKind = 'handshake' | 'heartbeat' | 'event';

/** Sources whose events a server pushed to /notify. */
const pushedSources = new Set(['backport', 'classic', 'medplum', 'hapi']);

export interface EncounterEvent {
  encounterId: string;
  versionId?: string;
  kind?: DraftKindHint;
}

/**
 * A subscription reference as it may appear in a log line: senders choose it, so only its start is
 * kept (a heartbeat can carry a kilobyte of it, thousands of times a day).
 */
export function subscriptionForLog(subscription: string): string {
  return subscription.length > 100 ? `${subscription.slice(0, 100)}…` : subscription;
}

/** Works on Appointment events (the pre-visit intake's invitations); called after the sender was answered. */
export type AppointmentHandler = (appointmentIds: string[]) => Promise<void>;

export class EventIntake {
  readonly #options: EventIntakeOptions;
  #appointmentHandler: AppointmentHandler | undefined;

  constructor(options: EventIntakeOptions) {
    this.#options = options;
  }

  #count(source: string, outcome: string, amount = 1): void {
    if (amount > 0) this.#options.metrics?.eventsReceived.inc({ source, outcome }, amount);
  }

  requestReconcile(reason: string, source: string): void {
    // Backport empty payloads were counted as deliveries where the notification was accepted.
    if (source !== 'backport' && pushedSources.has(source)) this.#options.onDelivery?.(undefined, 'event');
    this.#count(source, 'reconcile');
    this.#options.requestReconcile?.(reason);
  }

  /**
   * Who works on Appointment events; set by the composition root when the pre-visit intake is on (built after
   * the intake, which must answer /notify from the start). Without one, Appointment events are ignored.
   */
  handleAppointments(handler: AppointmentHandler): void {
    this.#appointmentHandler = handler;
  }

  /** Whether anyone works on Appointment events (the polling reconciler looks for them only then). */
  get handlesAppointments(): boolean {
    return this.#appointmentHandler !== undefined;
  }

  /**
   * Appointment events: handed to the handler after this turn, so the sender is answered before any FHIR
   * call (the handler reads each Appointment again). Not kept in the durable queue: a lost one is found again
   * by the next event for that Appointment. Returns how many were taken.
   */
  acceptAppointments(appointmentIds: string[], source: string): number {
    const ids = appointmentIds.filter((id) => isFhirId(id));
    if (source !== 'backport' && pushedSources.has(source) && ids.length > 0)
      this.#options.onDelivery?.(undefined, 'event');
    const handler = this.#appointmentHandler;
    if (!handler) {
      this.#count(source, 'ignored', ids.length);
      return 0;
    }
    if (ids.length === 0) return 0;
    this.#count(source, 'appointment', ids.length);
    setImmediate(() => {
      handler(ids).catch((error: unknown) =>
        this.#options.logger.warn({ error: (error as Error).name }, 'appointment-events-failed'),
      );
    });
    return ids.length;
  }

  /** Queues encounter events; duplicates of a job still waiting collapse in the queue. */
  async acceptEncounters(events: EncounterEvent[], source: string): Promise<number> {
    if (source !== 'backport' && pushedSources.has(source) && events.length > 0)
      this.#options.onDelivery?.(undefined, 'event');
    const jobs: EncounterJobInput[] = events
      .filter((event) => isFhirId(event.encounterId))
      .map((event) => ({
        encounterId: event.encounterId,
        source,
        ...(isFhirId(event.versionId) ? { versionId: event.versionId } : {}),
        ...(event.kind ? { kind: event.kind } : {}),
      }));
    if (jobs.length === 0) return 0;
    const { added } = await this.#options.queue.enqueue(jobs);
    this.#count(source, 'queued', added);
    this.#count(source, 'collapsed', jobs.length - added);
    if (added > 0) this.#options.onQueued?.(added);
    return added;
  }

  #waiting: {
    notification: ParsedNotification;
    source: string;
    resolve: (result: IntakeResult) => void;
    reject: (error: unknown) => void;
  }[] = [];

  /**
   * A Backport notification: counters tracked, redeliveries dropped, gaps and resets noted.
   * Notifications arriving in the same turn of the event loop are tracked in one transaction.
   */
  acceptNotification(notification: ParsedNotification, source = 'backport'): Promise<IntakeResult> {
    const tracker = this.#options.tracker;
    if (!tracker) {
      const fresh =
        notification.type === 'event-notification' || notification.type === 'query-event'
          ? notification.events
          : [];
      return this.#accept(notification, source, {
        fresh,
        duplicates: 0,
        gap: [],
        filled: 0,
        reset: false,
        untracked: false,
      });
    }
    return new Promise((resolve, reject) => {
      this.#waiting.push({ notification, source, resolve, reject });
      if (this.#waiting.length === 1) setImmediate(() => void this.#flush(tracker));
    });
  }

  async #flush(tracker: EventCounterTracker): Promise<void> {
    const batch = this.#waiting.splice(0);
    let observations: CounterObservation[];
    try {
      observations = await tracker.observeMany(batch.map((item) => item.notification));
    } catch (error) {
      for (const item of batch) item.reject(error);
      return;
    }
    batch.forEach((item, index) => {
      this.#accept(item.notification, item.source, observations[index]).then(item.resolve, item.reject);
    });
  }

  async #accept(
    notification: ParsedNotification,
    source: string,
    observation: CounterObservation,
  ): Promise<IntakeResult> {
    const { logger, metrics } = this.#options;
    const result: IntakeResult = { queued: 0, events: 0, duplicates: 0, reconcileRequested: false };
    const subscription = subscriptionForLog(notification.subscription);
    const delivered =
      notification.type === 'event-notification'
        ? 'event'
        : notification.type === 'handshake' || notification.type === 'heartbeat'
          ? notification.type
          : undefined;
    if (source === 'backport' && delivered) this.#options.onDelivery?.(notification.subscription, delivered);
    result.duplicates = observation.duplicates;
    this.#count(source, 'duplicate', observation.duplicates);
    // Answered and worked, but counted here rather than stored: the service neither made it nor was told of it.
    if (observation.untracked) this.#count(source, 'untracked-subscription');
    if (observation.gap.length > 0) {
      // Often only out of order (concurrent deliveries): the watchdog decides after the grace period.
      logger.debug({ subscription, missing: observation.gap.length }, 'subscription-numbers-missing');
    }
    if (observation.reset) {
      metrics?.resetsDetected.inc();
      logger.warn({ subscription }, 'subscription-counter-reset');
      this.requestReconcile('counter-reset', source);
      result.reconcileRequested = true;
    }

    const encounters: EncounterEvent[] = [];
    const appointments: string[] = [];
    for (const event of observation.fresh) {
      if (!event.focus) {
        // Empty payload: the server tells us something changed, not what. Ask the reconciler.
        if (!result.reconcileRequested) this.requestReconcile('empty-payload', source);
        result.reconcileRequested = true;
        continue;
      }
      if (event.focus.startsWith('Appointment/')) {
        appointments.push(event.focus.slice('Appointment/'.length));
        continue;
      }
      if (!event.focus.startsWith('Encounter/')) {
        this.#count(source, 'ignored');
        continue;
      }
      const versionId = (event.resource as { meta?: { versionId?: unknown } } | undefined)?.meta?.versionId;
      encounters.push({
        encounterId: event.focus.slice('Encounter/'.length),
        ...(isFhirId(versionId) ? { versionId } : {}),
      });
    }
    result.events = encounters.length;
    result.queued = await this.acceptEncounters(encounters, source);
    if (appointments.length > 0) this.acceptAppointments(appointments, source);
    logger.info(
      {
        subscription,
        tracked: !observation.untracked,
        type: notification.type,
        events: notification.events.length,
        queued: result.queued,
        duplicates: result.duplicates,
        gap: observation.gap.length,
        reset: observation.reset,
      },
      'notification-received',
    );
    return result;
  }
}
