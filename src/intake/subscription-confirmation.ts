import type { Subscription } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import { relativeReference } from '../../fhir/subscription-notification.ts';
import type { Logger } from '../log.ts';

/**
 * Whether the server really delivers to the service's Subscription. A Subscription that exists is not
 * one that delivers: Medplum stored a `requested` one and never sent anything, and a server that cannot
 * reach the endpoint never completes the handshake. After the Subscription is created or found, a
 * handshake, a heartbeat, an event or the status `active` (read again from the server) confirms it;
 * when none comes within the window the service says so (log, /readyz) and polls by itself, and keeps
 * reading the status so it notices when the server comes round.
 */
export interface SubscriptionConfirmationOptions {
  fhir: Pick<FhirClient, 'read'>;
  logger: Logger;
  confirmWithinMs: number;
  /** Called once when the window passes unconfirmed: start polling. */
  onUnconfirmed: () => void;
  /** Called when confirmation arrives after onUnconfirmed: the fallback may stop. */
  onConfirmed: () => void;
}

export type ContactKind = 'handshake' | 'heartbeat' | 'event' | 'status';

export interface SubscriptionReadiness {
  id: string;
  /** As the server last said (create or find, then each read); a delivery confirms even while it lags. */
  status: string | undefined;
  confirmed: boolean;
  /** Present while the service polls because the Subscription is unconfirmed. */
  fallback?: 'polling';
}

interface Watched {
  id: string;
  status: string | undefined;
  confirmed: boolean;
  fallback: boolean;
}

/** Contacts remembered from before the Subscription's id is known (a handshake can beat the create response). */
const earlyContactLimit = 32;
const statusRefreshDelayMs = 1_000;

export class SubscriptionConfirmation {
  readonly #options: SubscriptionConfirmationOptions;
  #watched: Watched | undefined;
  #timer: NodeJS.Timeout | undefined;
  #stopped = false;
  /** References heard from while no Subscription was watched yet; undefined: a delivery naming none. */
  readonly #early = new Map<string | undefined, ContactKind>();

  constructor(options: SubscriptionConfirmationOptions) {
    this.#options = options;
  }

  /**
   * An authenticated delivery: a Backport notification naming its subscription, or a classic or
   * Medplum event (undefined: such deliveries name none, and only the server the Subscription was
   * made on sends them to this endpoint with the service's credentials).
   */
  noteContact(subscription: string | undefined, kind: ContactKind): void {
    const reference = subscription === undefined ? undefined : relativeReference(subscription.trim());
    const watched = this.#watched;
    if (!watched) {
      if (this.#early.size >= earlyContactLimit) this.#early.delete(this.#early.keys().next().value);
      this.#early.set(reference, kind);
      return;
    }
    if (watched.confirmed) return;
    if (reference === undefined || reference === `Subscription/${watched.id}`) this.#confirm(kind);
  }

  /** Starts the window for the Subscription just created or found. */
  watch(subscription: Subscription): void {
    if (!subscription.id || this.#stopped) return;
    this.#clearTimer();
    this.#watched = { id: subscription.id, status: subscription.status, confirmed: false, fallback: false };
    const early =
      this.#early.get(`Subscription/${subscription.id}`) ??
      (this.#early.has(undefined) ? this.#early.get(undefined) : undefined);
    this.#early.clear();
    if (early) this.#confirm(early);
    else if (subscription.status === 'active') this.#confirm('status');
    else this.#schedule(() => this.#deadline(), this.#options.confirmWithinMs);
  }

  readiness(): SubscriptionReadiness | undefined {
    const watched = this.#watched;
    if (!watched) return undefined;
    return {
      id: watched.id,
      status: watched.status,
      confirmed: watched.confirmed,
      ...(watched.fallback ? { fallback: 'polling' as const } : {}),
    };
  }

  stop(): void {
    this.#stopped = true;
    this.#clearTimer();
  }

  #schedule(work: () => Promise<void>, delayMs: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => void work(), delayMs);
    this.#timer.unref();
  }

  #clearTimer(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  /** Reads the Subscription's status again; true when it is active. */
  async #statusIsActive(watched: Watched): Promise<boolean> {
    try {
      const current = await this.#options.fhir.read<Subscription>('Subscription', watched.id);
      watched.status = current.status;
    } catch (error) {
      this.#options.logger.warn(
        { subscription: watched.id, error: normalizeOperationOutcome(error).message },
        'subscription-status-unreadable',
      );
    }
    return watched.status === 'active';
  }

  async #deadline(): Promise<void> {
    const watched = this.#watched;
    if (!watched || watched.confirmed || this.#stopped) return;
    if (await this.#statusIsActive(watched)) return this.#confirm('status');
    if (watched.confirmed || this.#stopped || this.#watched !== watched) return;
    watched.fallback = true;
    this.#options.logger.warn(
      {
        subscription: watched.id,
        status: watched.status,
        waitedMs: this.#options.confirmWithinMs,
        fallback: 'polling',
      },
      `subscription-unconfirmed: the server sent no handshake, heartbeat or event for Subscription/${watched.id} and its status is ${watched.status ?? 'unknown'}, not active; it may never deliver, so the service polls instead`,
    );
    this.#options.onUnconfirmed();
    this.#schedule(() => this.#recheck(), this.#options.confirmWithinMs);
  }

  async #recheck(): Promise<void> {
    const watched = this.#watched;
    if (!watched || watched.confirmed || this.#stopped) return;
    if (await this.#statusIsActive(watched)) return this.#confirm('status');
    if (this.#watched === watched && !watched.confirmed)
      this.#schedule(() => this.#recheck(), this.#options.confirmWithinMs);
  }

  #confirm(kind: ContactKind): void {
    const watched = this.#watched;
    if (!watched || watched.confirmed) return;
    this.#clearTimer();
    // The status stays what the server last said: a delivery proves it sends even while its record lags.
    watched.confirmed = true;
    const wasFallingBack = watched.fallback;
    watched.fallback = false;
    this.#options.logger.info(
      { subscription: watched.id, by: kind, afterFallback: wasFallingBack },
      'subscription-confirmed',
    );
    if (wasFallingBack) this.#options.onConfirmed();
    // A handshake is sent before the server records its answer: read the status a moment later for /readyz.
    if (kind !== 'status')
      this.#schedule(async () => void (await this.#statusIsActive(watched)), statusRefreshDelayMs);
  }
}
