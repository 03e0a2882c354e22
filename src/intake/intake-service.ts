import path from 'node:path';
import type { Encounter } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import type { IntakeConfig } from '../config/intake-config.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { JobQueue } from '../queue/job-queue.ts';
import type { Leadership } from '../storage/leadership.ts';
import type { SqlDatabase } from '../storage/sql-database.ts';
import { enqueueFromCdsHook } from './cds-hook-events.ts';
import { EventCounterTracker } from './event-counter-tracker.ts';
import { EventIntake } from './event-intake.ts';
import { IntakeStateStore } from './intake-state-store.ts';
import { PollingReconciler } from './polling-reconciler.ts';
import { sharedRateLimit } from './rate-limiter.ts';
import { SubscriptionConfirmation, type SubscriptionReadiness } from './subscription-confirmation.ts';
import { ensureSubscription, type SubscriptionSpec } from './subscription-manager.ts';
import { subscriptionSpecFor } from './subscription-server.ts';
import { SubscriptionWatchdog } from './subscription-watchdog.ts';
import { TrackedSubscriptions } from './tracked-subscriptions.ts';

/**
 * All event sources assembled: the intake (usable as soon as it is built, so /notify can answer
 * before the FHIR client exists), then on start() the polling reconciler, the subscription watchdog
 * and the subscription ensured on the server, watched until the server shows it delivers (polling
 * takes over when it does not). The composition root builds one and stops it on shutdown.
 */
export interface IntakeServiceOptions {
  config: IntakeConfig;
  dataDir: string;
  queue: JobQueue;
  logger: Logger;
  metrics?: ServiceMetrics;
  onQueued?: (added: number) => void;
  /** The shared database (PostgreSQL) for intake state; absent: `<dataDir>/intake.sqlite`. */
  database?: SqlDatabase;
  /** Whether this replica runs the scheduled work (the polling schedule, the watchdog); absent: it does. */
  leadership?: Leadership;
}

export class IntakeService {
  readonly intake: EventIntake;
  readonly store: IntakeStateStore;
  readonly tracker: EventCounterTracker;
  readonly tracked: TrackedSubscriptions;
  reconciler: PollingReconciler | undefined;
  watchdog: SubscriptionWatchdog | undefined;
  confirmation: SubscriptionConfirmation | undefined;
  readonly #options: IntakeServiceOptions;
  /**
   * Handed to the notify route by reference: the secret of the Medplum Subscription the service makes
   * is added once its id is known, so nobody configures it or restarts.
   */
  readonly #medplumSecrets: Record<string, string>;
  /** Deliveries heard before start() built the confirmation (the notify route answers from the beginning). */
  readonly #earlyDeliveries: [string | undefined, 'handshake' | 'heartbeat' | 'event'][] = [];
  /** Polling started only because the Subscription is unconfirmed: stopped again once it is confirmed. */
  #fallbackPolling = false;
  /** The stored service Subscription read and stale subscription state forgotten (see open()). */
  readonly #loaded: Promise<void>;

  constructor(options: IntakeServiceOptions) {
    this.#options = options;
    this.#medplumSecrets = { ...options.config.medplumSecrets };
    this.store = new IntakeStateStore(options.database ?? path.join(options.dataDir, 'intake.sqlite'));
    this.tracked = new TrackedSubscriptions(options.config.trackedSubscriptions);
    this.tracker = new EventCounterTracker(this.store, this.tracked);
    this.intake = new EventIntake({
      queue: options.queue,
      logger: options.logger,
      metrics: options.metrics,
      tracker: this.tracker,
      onQueued: options.onQueued,
      requestReconcile: (reason) => this.reconciler?.trigger(reason),
      onDelivery: (subscription, kind) => {
        if (this.confirmation) this.confirmation.noteContact(subscription, kind);
        else if (this.#earlyDeliveries.length < 32) this.#earlyDeliveries.push([subscription, kind]);
      },
    });
    const { store, tracked } = this;
    this.#loaded = (async () => {
      const own = await store.serviceSubscription();
      if (own) tracked.setOwn(own);
      // State of subscriptions no longer tracked (or never: left by earlier versions) goes now.
      await store.forgetSubscriptionsExcept(tracked.keys());
    })();
    this.#loaded.catch(() => undefined);
  }

  /** Builds the intake and reads what it must know before the first notification is counted. */
  static async open(options: IntakeServiceOptions): Promise<IntakeService> {
    const service = new IntakeService(options);
    await service.#loaded;
    return service;
  }

  /** For /readyz: the service's Subscription and whether the server was seen delivering it. */
  readiness(): { subscription?: SubscriptionReadiness } {
    const subscription = this.confirmation?.readiness();
    return subscription ? { subscription } : {};
  }

  /**
   * A CDS Hooks call as an event (encounter-start -> pre-visit briefing, encounter-discharge ->
   * progress summary). For the CDS Hooks router: call it with the hook name and the request context.
   */
  async enqueueFromCdsHook(
    hook: string,
    context: unknown,
    readEncounter: (encounterId: string) => Promise<Encounter>,
  ): Promise<{ queued: number }> {
    if (!this.#options.config.sources.cdsHooks) return { queued: 0 };
    return enqueueFromCdsHook(this.intake, hook, context, readEncounter);
  }

  /** What /notify needs (pass as AppOptions.notify). */
  notifyOptions() {
    const { config } = this.#options;
    return {
      intake: this.intake,
      sources: config.sources,
      medplumSecrets: this.#medplumSecrets,
      rateLimit: config.rateLimit,
      // With replicas the buckets are shared: a flood spread by the balancer spends one budget per client.
      ...(this.#options.database
        ? {
            rateLimits: {
              unauthenticated: sharedRateLimit(
                this.store,
                'notify-unauthenticated',
                config.rateLimit.unauthenticatedPerMinute,
              ),
              emptyPayloads: sharedRateLimit(
                this.store,
                'notify-empty-payload',
                config.rateLimit.emptyPayloadPerMinute,
              ),
            },
          }
        : {}),
    };
  }

  /**
   * Starts polling and the watchdog against the FHIR server, and ensures the Subscription when an
   * endpoint is given. A server that refuses Subscriptions does not stop the service: polling covers it.
   */
  async start(
    fhir: FhirClient,
    options: {
      /** Where the server should send notifications, and the bearer secret; absent: no Subscription ensured. */
      subscription?: Pick<SubscriptionSpec, 'endpoint' | 'secret' | 'declareProfiles'>;
      /**
       * Criteria of a second, classic rest-hook Subscription for Appointments (the pre-visit intake invites on
       * a booked one), ensured beside the service's own; absent: none. Classic on every server: HAPI and
       * Medplum deliver classic rest-hooks, and Backport topics for Appointments are each server's own.
       */
      appointmentCriteria?: string;
      /**
       * False on the embedded sandbox, which pushes every change itself: polling then only runs when
       * asked (empty payloads, gaps) and starts from now, not from the seeded history.
       */
      schedulePolling?: boolean;
    } = {},
  ): Promise<void> {
    await this.#loaded;
    const subscription = options.subscription;
    const { config, logger, metrics, leadership } = this.#options;
    this.reconciler = new PollingReconciler({
      fhir,
      store: this.store,
      intake: this.intake,
      logger,
      metrics,
      overlapMs: config.polling.overlapMs,
      pageSize: config.polling.pageSize,
      initialLookbackMs: config.polling.initialLookbackMs,
      leadership,
    });
    const reconciler = this.reconciler;
    this.watchdog = new SubscriptionWatchdog({
      fhir,
      store: this.store,
      intake: this.intake,
      reconcile: (reason) => reconciler.request(reason),
      logger,
      metrics,
      gapGraceMs: config.gapGraceMs,
      heartbeatPeriodMs: config.heartbeat.periodMs,
      useEventsOperation: config.useEventsOperation,
      callbackHosts: config.callbackHosts,
      leadership,
    });
    this.watchdog.start(config.heartbeat.checkIntervalMs);
    this.confirmation = new SubscriptionConfirmation({
      fhir,
      logger,
      confirmWithinMs: config.subscription.confirmWithinMs,
      onUnconfirmed: () => this.#pollInstead('subscription-unconfirmed'),
      onConfirmed: () => {
        if (!this.#fallbackPolling) return;
        this.#fallbackPolling = false;
        void reconciler.unschedule();
      },
    });
    for (const [delivered, kind] of this.#earlyDeliveries.splice(0))
      this.confirmation.noteContact(delivered, kind);
    if (config.sources.polling && options.schedulePolling !== false) {
      this.reconciler.start(config.polling.cron);
      this.reconciler.trigger('start');
    } else {
      const now = new Date().toISOString();
      await this.store.initialiseCursor('Encounter', now);
      await this.store.initialiseCursor('Appointment', now);
    }
    if (
      subscription &&
      config.subscription.ensureOnStart &&
      (config.sources.backport || config.sources.classic || config.sources.medplum)
    ) {
      // In the background: a slow or Subscription-less server must not hold up start-up.
      void this.#ensure(fhir, subscription, options.appointmentCriteria);
    }
  }

  async #ensure(
    fhir: FhirClient,
    subscription: Pick<SubscriptionSpec, 'endpoint' | 'secret' | 'declareProfiles'>,
    appointmentCriteria: string | undefined,
  ): Promise<void> {
    const { config, logger, dataDir } = this.#options;
    try {
      const spec = await subscriptionSpecFor(fhir, config.subscription, {
        ...subscription,
        dataDir,
        ...(config.medplumSubscriptionSecret ? { medplumSecret: config.medplumSubscriptionSecret } : {}),
      });
      const { subscription: ensured, action } = await ensureSubscription(fhir, spec);
      if (ensured.id) {
        const reference = `Subscription/${ensured.id}`;
        await this.store.saveServiceSubscription(reference, Date.now());
        const replaced = this.tracked.setOwn(reference);
        if (replaced) await this.store.forgetSubscription(replaced);
        // Medplum names the subscription in X-Medplum-Subscription: its deliveries are checked against this key.
        if (spec.medplumSecret) this.#medplumSecrets[ensured.id] = spec.medplumSecret;
      }
      logger.info(
        { subscription: ensured.id, action, status: ensured.status, server: spec.server, mode: spec.mode },
        'subscription-ensured',
      );
      this.confirmation?.watch(ensured);
      if (appointmentCriteria)
        await this.#ensureAppointments(fhir, { ...spec, mode: 'classic', criteria: appointmentCriteria });
    } catch (error) {
      logger.warn(
        { error: normalizeOperationOutcome(error).message },
        'subscription-ensure-failed; polling covers',
      );
      this.#pollInstead('subscription-ensure-failed');
    }
  }

  /**
   * The Appointment Subscription: not watched for confirmation or counted (polling covers Encounters, not
   * invitations); a server that refuses it leaves the Encounter path as it is.
   */
  async #ensureAppointments(fhir: FhirClient, spec: SubscriptionSpec): Promise<void> {
    const { logger } = this.#options;
    try {
      const { subscription, action } = await ensureSubscription(fhir, spec);
      if (subscription.id && spec.medplumSecret) this.#medplumSecrets[subscription.id] = spec.medplumSecret;
      logger.info(
        { subscription: subscription.id, action, status: subscription.status },
        'appointment-subscription-ensured',
      );
    } catch (error) {
      logger.warn(
        { error: normalizeOperationOutcome(error).message },
        'appointment-subscription-ensure-failed; invitations come from planned Encounters only',
      );
    }
  }

  /** Whatever the configuration said about polling: without deliveries it is the only source left. */
  #pollInstead(reason: string): void {
    const reconciler = this.reconciler;
    if (!reconciler) return;
    if (!reconciler.scheduled) {
      reconciler.start(this.#options.config.polling.cron);
      this.#fallbackPolling = true;
    }
    reconciler.trigger(reason);
  }

  async stop(): Promise<void> {
    this.confirmation?.stop();
    this.watchdog?.stop();
    await this.reconciler?.stop();
    await this.#loaded.catch(() => undefined);
    await this.store.close();
  }
}
