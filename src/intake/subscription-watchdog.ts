import type { Subscription } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import { parseNotification, relativeReference } from '../../fhir/subscription-notification.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { Leadership } from '../storage/leadership.ts';
import type { EventIntake } from './event-intake.ts';
import type { IntakeStateStore } from './intake-state-store.ts';

/**
 * Recovery for Backport subscriptions. Missing event numbers that did not arrive within the grace
 * period are fetched with `$events` where the server supports it, else (or for what `$events` did not
 * return) the polling reconciler runs. A subscription silent for longer than its heartbeat period is
 * asked for `$status` (its counter may reveal a gap or reset), reconciled, and reactivated when the
 * server switched it off. Only the FHIR server's own origin, or hosts on the allow-list naming it, is
 * ever called back: a notification cannot point the service elsewhere. With replicas, only the
 * leader checks on its timer (the counters it reads are shared).
 */
export interface SubscriptionWatchdogOptions {
  fhir: FhirClient;
  store: IntakeStateStore;
  intake: EventIntake;
  reconcile: (reason: string) => Promise<unknown>;
  logger: Logger;
  metrics?: ServiceMetrics;
  gapGraceMs: number;
  /** 0 switches the heartbeat check off. */
  heartbeatPeriodMs: number;
  useEventsOperation: boolean;
  /** Extra host names (host or host:port) that name the same FHIR server. */
  callbackHosts: string[];
  /** Whether this replica runs the timed check; absent: it does. */
  leadership?: Leadership;
  now?: () => number;
}

export interface WatchdogReport {
  recoveredByEvents: number;
  reconciled: number;
  silent: number;
  reactivated: number;
}

export class SubscriptionWatchdog {
  readonly #options: SubscriptionWatchdogOptions;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #checking: Promise<WatchdogReport> | undefined;

  constructor(options: SubscriptionWatchdogOptions) {
    this.#options = options;
    this.#now = options.now ?? Date.now;
  }

  start(intervalMs: number): void {
    this.#timer = setInterval(() => {
      if (this.#options.leadership && !this.#options.leadership.isLeader) return;
      void this.check().catch((error: unknown) =>
        this.#options.logger.warn({ error: normalizeOperationOutcome(error).message }, 'watchdog-failed'),
      );
    }, intervalMs);
    this.#timer.unref();
  }

  stop(): void {
    if (this.#timer) clearInterval(this.#timer);
    this.#timer = undefined;
  }

  /** The id of a subscription the service may call back, or undefined when it lives elsewhere. */
  callableId(subscription: string): string | undefined {
    const reference = relativeReference(subscription);
    if (!reference?.startsWith('Subscription/')) return undefined;
    if (/^https?:\/\//i.test(subscription)) {
      const url = new URL(subscription);
      const allowed =
        url.origin === this.#options.fhir.origin ||
        this.#options.callbackHosts.includes(url.host) ||
        this.#options.callbackHosts.includes(url.hostname);
      if (!allowed) return undefined;
    }
    return reference.slice('Subscription/'.length);
  }

  check(): Promise<WatchdogReport> {
    this.#checking ??= this.#check().finally(() => {
      this.#checking = undefined;
    });
    return this.#checking;
  }

  async #check(): Promise<WatchdogReport> {
    const report: WatchdogReport = { recoveredByEvents: 0, reconciled: 0, silent: 0, reactivated: 0 };
    const reasons = new Set<string>();
    await this.#recoverGaps(report, reasons);
    await this.#checkHeartbeats(report, reasons);
    for (const reason of reasons) {
      try {
        await this.#options.reconcile(reason);
        report.reconciled++;
      } catch {
        // Logged by the reconciler; the next check or scheduled poll tries again.
      }
    }
    return report;
  }

  async #recoverGaps(report: WatchdogReport, reasons: Set<string>): Promise<void> {
    const { store, fhir, intake, logger } = this.#options;
    const overdue = await store.missingOlderThan(this.#now() - this.#options.gapGraceMs);
    const bySubscription = Map.groupBy(overdue, (missing) => missing.subscription);
    for (const [subscription, missing] of bySubscription) {
      const numbers = missing.map((entry) => entry.eventNumber);
      // Still missing after the grace period: a real gap, not a late or out-of-order delivery.
      this.#options.metrics?.gapsDetected.inc({ subscription_kind: 'backport' }, numbers.length);
      logger.warn({ subscription, missing: numbers.length }, 'subscription-gap-detected');
      const id = this.callableId(subscription);
      if (id && this.#options.useEventsOperation) {
        try {
          const from = Math.min(...numbers);
          const to = Math.max(...numbers);
          const bundle = await fhir.get(
            `Subscription/${encodeURIComponent(id)}/$events?eventsSinceNumber=${from}&eventsUntilNumber=${to}`,
          );
          const notification = parseNotification(bundle);
          // The server may name itself differently: count the events against the subscription we track.
          const result = await intake.acceptNotification(
            { ...notification, subscription, type: 'query-event', eventsSinceSubscriptionStart: undefined },
            'backport-events',
          );
          report.recoveredByEvents += result.events;
        } catch (error) {
          logger.warn(
            { subscription, error: normalizeOperationOutcome(error).message },
            'events-operation-unavailable',
          );
        }
      }
      let stillMissing = false;
      for (const number of numbers) if (!(await store.wasSeen(subscription, number))) stillMissing = true;
      if (stillMissing) reasons.add('gap');
      await store.clearMissing(subscription, numbers);
    }
  }

  async #checkHeartbeats(report: WatchdogReport, reasons: Set<string>): Promise<void> {
    const { store, fhir, intake, logger, heartbeatPeriodMs } = this.#options;
    if (heartbeatPeriodMs <= 0) return;
    const now = this.#now();
    for (const state of await store.subscriptions()) {
      if (now - state.lastContactAt <= heartbeatPeriodMs) continue;
      report.silent++;
      reasons.add('heartbeat-missed');
      logger.warn({ subscription: state.subscription }, 'subscription-heartbeat-missed');
      // Whatever happens below, do not raise the alarm again before another period has passed.
      await store.saveSubscription({ ...state, lastContactAt: now });
      const id = this.callableId(state.subscription);
      if (!id) continue;
      let status: string | undefined;
      try {
        const notification = parseNotification(
          await fhir.get(`Subscription/${encodeURIComponent(id)}/$status`),
        );
        status = notification.status;
        await intake.acceptNotification(
          { ...notification, subscription: state.subscription, type: 'query-status', events: [] },
          'backport-status',
        );
      } catch (error) {
        logger.warn(
          { subscription: state.subscription, error: normalizeOperationOutcome(error).message },
          'status-operation-failed',
        );
      }
      if (status === 'error' || status === 'off') {
        try {
          const subscription = await fhir.read<Subscription>('Subscription', id);
          await fhir.update<Subscription>({ ...subscription, status: 'requested' });
          report.reactivated++;
          logger.info({ subscription: state.subscription }, 'subscription-reactivated');
        } catch (error) {
          logger.warn(
            { subscription: state.subscription, error: normalizeOperationOutcome(error).message },
            'subscription-reactivation-failed',
          );
        }
      }
    }
  }
}
