import type { NotificationEvent, ParsedNotification } from '../../fhir/subscription-notification.ts';
import type { IntakeStateStore } from './intake-state-store.ts';
import type { TrackedSubscriptions } from './tracked-subscriptions.ts';

/**
 * Tracks `events-since-subscription-start` and event numbers per subscription, persisted, to tell
 * apart: new events, redeliveries (dropped), late arrivals that fill a gap, gaps (numbers skipped:
 * recovered after a grace period) and resets (the counter went backwards: reconcile everything).
 * Only tracked subscriptions are counted; another subscription's events pass through untouched and
 * nothing about it is stored.
 */
export interface CounterObservation {
  /** Events to turn into work, in order. */
  fresh: NotificationEvent[];
  duplicates: number;
  /** Numbers found missing by this notification. */
  gap: number[];
  /** Late events that filled a gap. */
  filled: number;
  reset: boolean;
  /** The subscription is not one intake tracks: its events were passed on, nothing was stored. */
  untracked: boolean;
}

/** A jump larger than this is recorded as a reset (reconcile), not as that many missing numbers. */
const maxTrackedGap = 1_000;

/** What identifies one event beyond its number, so a redelivery can be told from a restarted counter. */
function signatureOf(event: NotificationEvent): string {
  if (!event.focus && !event.timestamp) return '';
  return `${event.focus ?? ''}@${event.timestamp ? Date.parse(event.timestamp) || event.timestamp : ''}`;
}

export class EventCounterTracker {
  readonly #store: IntakeStateStore;
  readonly #tracked: TrackedSubscriptions;
  readonly #now: () => number;

  constructor(store: IntakeStateStore, tracked: TrackedSubscriptions, now: () => number = Date.now) {
    this.#store = store;
    this.#tracked = tracked;
    this.#now = now;
  }

  observe(notification: ParsedNotification): Promise<CounterObservation> {
    return this.#store.transaction((state) => this.#observe(state, notification));
  }

  /** Several notifications in arrival order, in one transaction (group commit under bursts). */
  observeMany(notifications: ParsedNotification[]): Promise<CounterObservation[]> {
    return this.#store.transaction(async (state) => {
      const observations: CounterObservation[] = [];
      for (const notification of notifications) observations.push(await this.#observe(state, notification));
      return observations;
    });
  }

  async #observe(store: IntakeStateStore, notification: ParsedNotification): Promise<CounterObservation> {
    const now = this.#now();
    const counter = notification.eventsSinceSubscriptionStart;
    const carriesEvents = notification.type === 'event-notification' || notification.type === 'query-event';
    const events = carriesEvents ? notification.events : [];
    const observation: CounterObservation = {
      fresh: [],
      duplicates: 0,
      gap: [],
      filled: 0,
      reset: false,
      untracked: false,
    };
    const subscription = this.#tracked.keyFor(notification.subscription);
    if (subscription === undefined) return { ...observation, fresh: [...events], untracked: true };
    const known = await store.subscription(subscription);
    let highest = known?.highest ?? 0;

    const verdicts: ('new' | 'duplicate' | 'conflict')[] = [];
    let recognised = false;
    for (const event of events) {
      const verdict =
        event.eventNumber === undefined
          ? 'new'
          : await store.seenAs(subscription, event.eventNumber, signatureOf(event));
      verdicts.push(verdict);
      if (
        verdict === 'duplicate' ||
        (event.eventNumber !== undefined && (await store.isMissing(subscription, event.eventNumber)))
      )
        recognised = true;
    }
    // The counter went backwards: a number reused for another event, or a lower count with nothing
    // we recognise (a heartbeat or handshake after the server started over).
    if (
      known &&
      (verdicts.includes('conflict') ||
        (counter !== undefined && counter < highest && !recognised && notification.type !== 'query-event'))
    ) {
      observation.reset = true;
      await store.resetSubscription(subscription, 0, now);
      highest = 0;
    }

    const noteGap = async (from: number, to: number) => {
      if (to < from) return;
      if (to - from + 1 > maxTrackedGap) {
        observation.reset = true;
        return;
      }
      const numbers: number[] = [];
      for (let number = from; number <= to; number++) {
        if (!(await store.wasSeen(subscription, number))) numbers.push(number);
      }
      await store.addMissing(subscription, numbers, now);
      observation.gap.push(...numbers);
    };

    // Before the first event we know of, nothing is "missing": the reconciler covers history.
    const tracking = known !== undefined || observation.reset;
    for (const [index, event] of events.entries()) {
      const number = event.eventNumber;
      if (number === undefined) {
        observation.fresh.push(event);
        continue;
      }
      if (!observation.reset && verdicts[index] === 'duplicate') {
        observation.duplicates++;
        continue;
      }
      await store.markSeen(subscription, number, signatureOf(event), now);
      if (await store.fillMissing(subscription, number)) observation.filled++;
      else if (tracking && number > highest + 1) await noteGap(highest + 1, number - 1);
      highest = Math.max(highest, number);
      observation.fresh.push(event);
    }

    // Heartbeats and status reports carry only the counter: a higher count means events we never got.
    if (counter !== undefined && counter > highest) {
      if (tracking || carriesEvents) await noteGap(highest + 1, counter);
      highest = counter;
    }

    await store.saveSubscription({
      subscription,
      highest,
      lastContactAt: now,
      status: notification.status ?? known?.status,
    });
    return observation;
  }
}
