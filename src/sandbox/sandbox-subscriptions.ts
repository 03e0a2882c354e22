import { matchesSearchRequest, parseSearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { Bundle, Encounter, Subscription } from 'fhir/r4.js';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import { type Logger, silentLogger } from '../log.ts';
import type { ObservedRepository, ResourceWrite } from './observed-repository.ts';
import {
  backportProfiles,
  type NotificationType,
  notificationBundle,
  type SubscriptionEvent,
  statusParameters,
  statusSearchset,
} from './subscription-notifications.ts';

/**
 * Subscriptions as the FHIR Subscriptions Backport IG (R4) describes them, for Encounter events:
 * a Subscription created through the sandbox's API (classic `Encounter?...` criteria, or a topic URL
 * with `backport-filter-criteria`) gets a handshake and is activated, then an `event-notification`
 * (id-only unless the subscription asks otherwise) for every Encounter created or whose status
 * changes, numbered per subscription; heartbeats follow `backport-heartbeat-period`; `$status` and
 * `$events` answer from memory. Delivery is asynchronous, ordered per subscription, retried a few
 * times, and only to allowed endpoints.
 */
export type { NotificationType } from './subscription-notifications.ts';

const filterCriteriaUrl = `${backportProfiles}/backport-filter-criteria`;
const timeoutUrl = `${backportProfiles}/backport-timeout`;
const heartbeatPeriodUrl = `${backportProfiles}/backport-heartbeat-period`;
/** Events kept per subscription for `$events`. */
const eventLogLimit = 1000;

export interface SubscriptionOptions {
  /** URL prefixes notifications may go to. Absent: loopback hosts (localhost, 127.0.0.1, ::1) only. */
  allowedEndpoints?: string[];
  /** Waits before each retry; the number of entries is the number of retries. */
  retryDelaysMs?: number[];
  timeoutMs?: number;
  /** Send a handshake when a subscription is requested, and activate it on success (default true). */
  handshake?: boolean;
  logger?: Logger;
}

export interface DeliveryRecord {
  subscriptionId: string;
  type: NotificationType;
  eventNumber?: number;
  focus?: string;
  endpoint: string;
  attempts: number;
  status: 'delivered' | 'failed';
  httpStatus?: number;
}

interface DeliveryJob {
  subscription: Subscription;
  type: 'handshake' | 'heartbeat' | 'event-notification';
  event?: SubscriptionEvent;
}

function numberExtension(extensions: { url?: string; valueUnsignedInt?: number }[] | undefined, url: string) {
  const value = extensions?.find((candidate) => candidate.url === url)?.valueUnsignedInt;
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : undefined;
}

export function isLoopbackUrl(url: URL): boolean {
  return ['localhost', '127.0.0.1', '[::1]', '::1'].includes(url.hostname);
}

export class SandboxSubscriptions {
  private readonly repository: ObservedRepository;
  private readonly baseUrl: () => string | undefined;
  private readonly options: Required<Omit<SubscriptionOptions, 'allowedEndpoints'>> & {
    allowedEndpoints?: string[];
  };
  private readonly eventCounts = new Map<string, number>();
  private readonly eventLogs = new Map<string, SubscriptionEvent[]>();
  private readonly heartbeats = new Map<string, { period: number; timer: NodeJS.Timeout }>();
  private readonly lastSent = new Map<string, number>();
  private readonly chains = new Map<string, Promise<void>>();
  private readonly pending = new Set<Promise<void>>();
  private readonly controllers = new Set<AbortController>();
  private readonly extraAllowedEndpoints: string[] = [];
  private closed = false;
  /** The most recent deliveries (bounded), newest last: what tests and operators inspect. */
  readonly deliveries: DeliveryRecord[] = [];

  constructor(
    repository: ObservedRepository,
    baseUrl: () => string | undefined,
    options: SubscriptionOptions = {},
  ) {
    this.repository = repository;
    this.baseUrl = baseUrl;
    this.options = {
      allowedEndpoints: options.allowedEndpoints,
      retryDelaysMs: options.retryDelaysMs ?? [500, 2000, 5000],
      timeoutMs: options.timeoutMs ?? 10_000,
      handshake: options.handshake ?? true,
      logger: options.logger ?? silentLogger(),
    };
    repository.onWrite((write) => this.onWrite(write));
  }

  /** Resolves once every queued notification has been delivered or has given up. */
  async whenIdle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  /** Sends a heartbeat for one subscription now (the Backport IG's keep-alive). */
  async heartbeat(subscriptionId: string): Promise<void> {
    await this.enqueue({ subscription: await this.read(subscriptionId), type: 'heartbeat' });
  }

  /** `Subscription/[id]/$status` (one id) or `Subscription/$status` (all, or those named). */
  async statusBundle(ids?: string[]): Promise<Bundle> {
    const subscriptions = ids?.length
      ? await Promise.all(ids.map((id) => this.read(id)))
      : ((await this.repository.search({ resourceType: 'Subscription', count: 1000 })).entry ?? []).map(
          (entry) => entry.resource as unknown as Subscription,
        );
    return statusSearchset(
      subscriptions.map((subscription) =>
        statusParameters(
          {
            subscription,
            absolute: (relative) => this.absolute(relative),
            eventsSinceStart: this.eventCounts.get(subscription.id!) ?? 0,
            type: 'query-status',
          },
          [],
        ),
      ),
    );
  }

  /** `Subscription/[id]/$events`: the remembered events in a number range, as a query-event notification. */
  async eventsBundle(id: string, since?: number, until?: number): Promise<Bundle> {
    const subscription = await this.read(id);
    const events = (this.eventLogs.get(id) ?? []).filter(
      (event) =>
        (since === undefined || event.eventNumber >= since) &&
        (until === undefined || event.eventNumber <= until),
    );
    return notificationBundle(
      {
        subscription,
        absolute: (relative) => this.absolute(relative),
        eventsSinceStart: this.eventCounts.get(id) ?? 0,
        type: 'query-event',
      },
      events,
    );
  }

  close(): void {
    this.closed = true;
    for (const controller of this.controllers) controller.abort();
    for (const { timer } of this.heartbeats.values()) clearInterval(timer);
    this.heartbeats.clear();
  }

  /** Allows one more endpoint prefix (e.g. the service's public /notify URL once it is known). */
  allowEndpoint(prefix: string): void {
    this.extraAllowedEndpoints.push(prefix);
  }

  endpointAllowed(endpoint: string | undefined): boolean {
    if (!endpoint) return false;
    let url: URL;
    try {
      url = new URL(endpoint);
    } catch {
      return false;
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:') return false;
    // Same origin and a path under the allowed one: a bare string prefix would let `example.org.evil` through.
    const under = (prefix: string) => {
      try {
        const allowed = new URL(prefix);
        return allowed.origin === url.origin && url.pathname.startsWith(allowed.pathname);
      } catch {
        return false;
      }
    };
    if (this.extraAllowedEndpoints.some(under)) return true;
    if (this.options.allowedEndpoints) return this.options.allowedEndpoints.some(under);
    return isLoopbackUrl(url);
  }

  private async read(id: string): Promise<Subscription> {
    try {
      return (await this.repository.readResource('Subscription', id)) as unknown as Subscription;
    } catch {
      throw outcomeError('not-found', `Subscription/${id} not found`, 404);
    }
  }

  private onWrite(write: ResourceWrite): void {
    if (this.closed) return;
    if (write.current.resourceType === 'Subscription')
      this.onSubscriptionWrite(write.current as unknown as Subscription);
    if (write.current.resourceType === 'Encounter') {
      const previous = write.previous as unknown as Encounter | undefined;
      const current = write.current as unknown as Encounter;
      if (previous && previous.status === current.status) return;
      this.track(this.onEncounterEvent(current, write.interaction));
    }
  }

  private onSubscriptionWrite(subscription: Subscription): void {
    this.scheduleHeartbeats(subscription);
    if (subscription.status !== 'requested') return;
    const problem = this.unsupportedReason(subscription);
    if (problem) {
      this.track(this.setStatus(subscription, 'error', problem));
      return;
    }
    if (!this.options.handshake) {
      this.track(this.setStatus(subscription, 'active'));
      return;
    }
    this.track(
      this.enqueue({ subscription, type: 'handshake' }).then(async () => {
        const record = this.deliveries.findLast(
          (delivery) => delivery.subscriptionId === subscription.id && delivery.type === 'handshake',
        );
        if (record?.status === 'delivered') await this.setStatus(subscription, 'active');
        else await this.setStatus(subscription, 'error', 'handshake was not accepted by the endpoint');
      }),
    );
  }

  /** Heartbeats every `backport-heartbeat-period` seconds while active, skipped when something else went out. */
  private scheduleHeartbeats(subscription: Subscription): void {
    const id = subscription.id!;
    const period = numberExtension(subscription.channel?.extension as never, heartbeatPeriodUrl);
    const existing = this.heartbeats.get(id);
    if (subscription.status !== 'active' || !period) {
      if (existing) clearInterval(existing.timer);
      this.heartbeats.delete(id);
      return;
    }
    if (existing?.period === period) return;
    if (existing) clearInterval(existing.timer);
    const periodMs = period * 1000;
    const timer = setInterval(() => {
      if (this.closed || Date.now() - (this.lastSent.get(id) ?? 0) < periodMs * 0.9) return;
      void this.heartbeat(id).catch(() => undefined);
    }, periodMs);
    // Heartbeats must not keep a finished process alive.
    timer.unref();
    this.heartbeats.set(id, { period, timer });
  }

  private unsupportedReason(subscription: Subscription): string | undefined {
    if (subscription.channel?.type !== 'rest-hook') return 'only rest-hook channels are supported';
    if (!this.endpointAllowed(subscription.channel.endpoint))
      return 'the endpoint is not allowed by this sandbox';
    const criteria = subscription.criteria ?? '';
    if (!/^https?:\/\//.test(criteria) && !/^Encounter(\?|$)/.test(criteria))
      return 'only Encounter criteria or a topic URL are supported';
    return undefined;
  }

  private async setStatus(
    subscription: Subscription,
    status: 'active' | 'error',
    error?: string,
  ): Promise<void> {
    const current = await this.read(subscription.id!);
    await this.repository.updateResource({
      ...current,
      status,
      ...(error ? { error } : {}),
    } as unknown as Resource);
    this.options.logger.info({ subscriptionId: subscription.id, status }, 'sandbox-subscription-status');
  }

  private async onEncounterEvent(encounter: Encounter, interaction: 'create' | 'update'): Promise<void> {
    const timestamp = new Date().toISOString();
    const bundle = await this.repository.search({ resourceType: 'Subscription', count: 1000 });
    for (const entry of bundle.entry ?? []) {
      const subscription = entry.resource as unknown as Subscription;
      if (subscription.status !== 'active' && subscription.status !== 'requested') continue;
      // A subscription past its `end` is over, as on a real server.
      if (subscription.end && Date.parse(subscription.end) < Date.now()) continue;
      if (this.unsupportedReason(subscription) || !this.matches(subscription, encounter)) continue;
      const id = subscription.id!;
      const eventNumber = (this.eventCounts.get(id) ?? 0) + 1;
      this.eventCounts.set(id, eventNumber);
      const event: SubscriptionEvent = { eventNumber, timestamp, encounter, interaction };
      const log = this.eventLogs.get(id) ?? [];
      log.push(event);
      if (log.length > eventLogLimit) log.splice(0, log.length - eventLogLimit);
      this.eventLogs.set(id, log);
      void this.enqueue({ subscription, type: 'event-notification', event });
    }
  }

  private matches(subscription: Subscription, encounter: Encounter): boolean {
    const criteria = subscription.criteria ?? '';
    const filters = /^https?:\/\//.test(criteria)
      ? (subscription._criteria?.extension ?? [])
          .filter((extension) => extension.url === filterCriteriaUrl && extension.valueString)
          .map((extension) => extension.valueString as string)
      : [criteria];
    return filters.every((filter) => {
      const query = filter.replace(/^Encounter[.?]?/, '');
      if (!query) return true;
      const normalized = query.replace(/(^|&)patient=(?!Patient\/)([^&]+)/g, '$1patient=Patient/$2');
      return matchesSearchRequest(
        encounter as unknown as Resource,
        parseSearchRequest(`Encounter?${normalized}`),
      );
    });
  }

  private track(work: Promise<void>): void {
    const tracked = work.catch((error: unknown) => {
      this.options.logger.warn({ err: error }, 'sandbox-subscription-error');
    });
    this.pending.add(tracked);
    void tracked.finally(() => this.pending.delete(tracked));
  }

  /** Queues one notification behind the subscription's earlier ones so they arrive in order. */
  private enqueue(job: DeliveryJob): Promise<void> {
    const key = job.subscription.id!;
    const previous = this.chains.get(key) ?? Promise.resolve();
    const next = previous.then(() => this.deliver(job));
    this.chains.set(key, next);
    this.track(next);
    void next.finally(() => {
      if (this.chains.get(key) === next) this.chains.delete(key);
    });
    return next;
  }

  private async deliver(job: DeliveryJob): Promise<void> {
    const { subscription } = job;
    const id = subscription.id!;
    const channel = subscription.channel;
    const endpoint = channel.endpoint ?? '';
    const headers: Record<string, string> = { 'content-type': channel.payload ?? 'application/fhir+json' };
    for (const line of channel.header ?? []) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const timeoutSeconds = numberExtension(channel.extension as never, timeoutUrl);
    const timeoutMs = timeoutSeconds ? timeoutSeconds * 1000 : this.options.timeoutMs;
    const body = JSON.stringify(
      notificationBundle(
        {
          subscription,
          absolute: (relative) => this.absolute(relative),
          eventsSinceStart: job.event?.eventNumber ?? this.eventCounts.get(id) ?? 0,
          type: job.type,
        },
        job.event ? [job.event] : [],
      ),
    );
    let attempts = 0;
    let httpStatus: number | undefined;
    for (const delay of [0, ...this.options.retryDelaysMs]) {
      if (this.closed) break;
      if (delay) await this.sleep(delay);
      if (this.closed) break;
      attempts++;
      const controller = new AbortController();
      this.controllers.add(controller);
      const timer = setTimeout(() => controller.abort(), timeoutMs);
      try {
        const response = await fetch(endpoint, {
          method: 'POST',
          headers,
          body,
          signal: controller.signal,
          redirect: 'manual',
        });
        httpStatus = response.status;
        await response.arrayBuffer().catch(() => undefined);
        if (response.ok) break;
      } catch {
        httpStatus = undefined;
      } finally {
        clearTimeout(timer);
        this.controllers.delete(controller);
      }
    }
    const delivered = httpStatus !== undefined && httpStatus >= 200 && httpStatus < 300;
    if (delivered) this.lastSent.set(id, Date.now());
    this.record({
      subscriptionId: id,
      type: job.type,
      eventNumber: job.event?.eventNumber,
      focus: job.event ? `Encounter/${job.event.encounter.id}` : undefined,
      endpoint,
      attempts,
      status: delivered ? 'delivered' : 'failed',
      httpStatus,
    });
    this.options.logger.info(
      {
        subscriptionId: id,
        type: job.type,
        eventNumber: job.event?.eventNumber,
        attempts,
        httpStatus,
        delivered,
      },
      'sandbox-notification',
    );
  }

  private record(delivery: DeliveryRecord): void {
    this.deliveries.push(delivery);
    if (this.deliveries.length > 1000) this.deliveries.splice(0, this.deliveries.length - 1000);
  }

  private sleep(milliseconds: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, milliseconds);
      // A pending retry must not keep a finished process alive.
      timer.unref();
    });
  }

  private absolute(reference: string): string {
    const base = this.baseUrl();
    return base ? `${base.replace(/\/$/, '')}/${reference}` : reference;
  }
}
