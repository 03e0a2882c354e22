import { matchesSearchRequest, OperationOutcomeError, parseSearchRequest } from '@medplum/core';
import type { OperationOutcome as MedplumOutcome, Resource } from '@medplum/fhirtypes';
import type { Appointment, Bundle, Encounter, Subscription } from 'fhir/r4.js';
import { outcome, outcomeError } from '../../fhir/operation-outcome.ts';
import { type Logger, silentLogger } from '../log.ts';
import type { GuardedWrite, ObservedRepository, ResourceWrite } from './observed-repository.ts';
import {
  backportProfiles,
  type NotificationType,
  notificationBundle,
  type SubscriptionEvent,
  statusParameters,
  statusSearchset,
} from './subscription-notifications.ts';

/**
 * Subscriptions as the FHIR Subscriptions Backport IG (R4) describes them, for Encounter events (and
 * Appointment events, for classic `Appointment?...` criteria, as the pre-visit intake asks for), with
 * the lifecycle strict servers enforce. A Subscription is `requested` until its endpoint answers the
 * handshake with a 2xx, then `active`; only active subscriptions are notified: an `event-notification`
 * (id-only unless the subscription asks otherwise) for every Encounter created or whose status changes,
 * numbered per subscription, and heartbeats every `backport-heartbeat-period`. A notification that
 * still fails after a few retries puts the subscription in `error` (with the reason in
 * Subscription.error and `$status`); asking for `requested` again starts over with a handshake.
 * `$status` and `$events` answer from memory.
 *
 * Two rules keep the sandbox from being a tool against its own host: notifications go only to
 * endpoints allowed exactly (the service's own /notify, and those in configuration), and channel
 * headers are write-only. They usually carry the receiver's bearer secret, so they are kept here for
 * delivery and never stored in the FHIR repository: no read, vread, search, history, batch or
 * notification payload can return them.
 */
export type { NotificationType } from './subscription-notifications.ts';

const filterCriteriaUrl = `${backportProfiles}/backport-filter-criteria`;
const timeoutUrl = `${backportProfiles}/backport-timeout`;
const heartbeatPeriodUrl = `${backportProfiles}/backport-heartbeat-period`;
/** Events kept per subscription for `$events`. */
const eventLogLimit = 1000;

export interface SubscriptionOptions {
  /**
   * Notification endpoints allowed besides those added with `allowEndpoint`, each compared exactly
   * (scheme, host, port, path and query). Absent or empty: none, so nothing is delivered until allowed.
   */
  allowedEndpoints?: string[];
  /** Waits before each retry; the number of entries is the number of retries. */
  retryDelaysMs?: number[];
  timeoutMs?: number;
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

/** The write-only part of a subscription's channel, bound to the endpoint it was given for. */
interface ChannelSecret {
  endpoint: string | undefined;
  header: string[];
}

function numberExtension(extensions: { url?: string; valueUnsignedInt?: number }[] | undefined, url: string) {
  const value = extensions?.find((candidate) => candidate.url === url)?.valueUnsignedInt;
  return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : undefined;
}

/** Headers the sandbox sets itself: a channel header cannot change how the request is framed or addressed. */
const reservedHeaders = new Set([
  'host',
  'content-length',
  'content-type',
  'transfer-encoding',
  'connection',
]);

/** `Name: value`, as Subscription.channel.header lines are written; undefined when not a valid HTTP header. */
function parseHeaderLine(line: string): { name: string; value: string } | undefined {
  const match = /^([!#$%&'*+\-.^_`|~0-9A-Za-z]+)[ \t]*:[ \t]*([\t\x20-\x7e]*?)[ \t]*$/.exec(line);
  return match ? { name: match[1].toLowerCase(), value: match[2] } : undefined;
}

/**
 * An endpoint in the one form it is compared and called in: the URL parser's, so `/notify/../x`,
 * default ports and letter case are resolved before comparing. Only plain http(s) URLs qualify: user
 * info (`http://user@host`) and fragments are refused rather than normalised away.
 */
export function normalizedEndpoint(endpoint: string | undefined): string | undefined {
  if (typeof endpoint !== 'string' || !endpoint) return undefined;
  let url: URL;
  try {
    url = new URL(endpoint);
  } catch {
    return undefined;
  }
  if (url.protocol !== 'http:' && url.protocol !== 'https:') return undefined;
  if (url.username || url.password || url.hash || endpoint.includes('@')) return undefined;
  return url.href;
}

/** A 422 naming the rule broken, as strict servers (HAPI's SubscriptionValidatingInterceptor) refuse subscriptions they will not serve. */
function refusal(diagnostics: string, expression: string): OperationOutcomeError {
  const refused = { ...outcome('business-rule', diagnostics, 'error', [expression]), id: 'business-rule' };
  // Thrown inside Medplum's router, which maps the `business-rule` outcome id to 422.
  return new OperationOutcomeError(refused as unknown as MedplumOutcome);
}

export class SandboxSubscriptions {
  private readonly repository: ObservedRepository;
  private readonly baseUrl: () => string | undefined;
  private readonly options: Required<Omit<SubscriptionOptions, 'allowedEndpoints'>>;
  private readonly allowedEndpoints = new Set<string>();
  private readonly channelSecrets = new Map<string, ChannelSecret>();
  private readonly eventCounts = new Map<string, number>();
  private readonly eventLogs = new Map<string, SubscriptionEvent[]>();
  private readonly heartbeats = new Map<string, { period: number; timer: NodeJS.Timeout }>();
  private readonly lastSent = new Map<string, number>();
  private readonly chains = new Map<string, Promise<void>>();
  private readonly pending = new Set<Promise<void>>();
  private readonly controllers = new Set<AbortController>();
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
      retryDelaysMs: options.retryDelaysMs ?? [500, 2000, 5000],
      timeoutMs: options.timeoutMs ?? 10_000,
      logger: options.logger ?? silentLogger(),
    };
    for (const endpoint of options.allowedEndpoints ?? []) this.allowEndpoint(endpoint);
    repository.guardWrites((resource, previous) => this.guardWrite(resource, previous));
    repository.onWrite((write) => this.onWrite(write));
  }

  /** Resolves once every queued notification has been delivered or has given up. */
  async whenIdle(): Promise<void> {
    while (this.pending.size > 0) await Promise.allSettled([...this.pending]);
  }

  /** Sends a heartbeat for one subscription now (the Backport IG's keep-alive), if it is active. */
  async heartbeat(subscriptionId: string): Promise<void> {
    const subscription = await this.read(subscriptionId);
    if (subscription.status === 'active') await this.enqueue({ subscription, type: 'heartbeat' });
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

  /** Allows one more endpoint, exactly as given (e.g. the service's public /notify URL once it is known). */
  allowEndpoint(endpoint: string): void {
    const normalized = normalizedEndpoint(endpoint);
    if (!normalized) throw new Error('an allowed subscription endpoint must be a plain http(s) URL');
    this.allowedEndpoints.add(normalized);
  }

  endpointAllowed(endpoint: string | undefined): boolean {
    const normalized = normalizedEndpoint(endpoint);
    return normalized !== undefined && this.allowedEndpoints.has(normalized);
  }

  private async read(id: string): Promise<Subscription> {
    try {
      return (await this.repository.readResource('Subscription', id)) as unknown as Subscription;
    } catch {
      throw outcomeError('not-found', `Subscription/${id} not found`, 404);
    }
  }

  /**
   * Every client write of a Subscription passes here before it is stored: refused when the sandbox
   * would not serve it, its status set by the lifecycle rather than by the client, its channel headers
   * taken out and kept for delivery only.
   */
  private guardWrite(resource: Resource, previousResource: Resource | undefined): GuardedWrite | undefined {
    if (resource.resourceType !== 'Subscription') return undefined;
    const subscription = resource as unknown as Subscription;
    const previous = previousResource as unknown as Subscription | undefined;
    const header = subscription.channel?.header;
    if (
      header !== undefined &&
      (!Array.isArray(header) ||
        header.some((line) => typeof line !== 'string' || line.length > 4096 || !parseHeaderLine(line)))
    )
      throw refusal(
        'Subscription.channel.header must be a list of HTTP header lines (Name: value)',
        'Subscription.channel.header',
      );
    const status = this.statusForClientWrite(subscription, previous);
    // Switching a subscription off is always allowed; anything that may lead to a delivery is checked.
    if (status !== 'off') {
      const problem = this.unsupportedReason(subscription);
      if (problem) throw refusal(problem.diagnostics, problem.expression);
    }
    const { error: _clientError, channel, ...rest } = subscription;
    const stored: Subscription = {
      ...rest,
      status,
      // Subscription.error is the server's account of why it stopped; a client cannot write it.
      ...(status === 'error' && previous?.error ? { error: previous.error } : {}),
      ...(channel ? { channel: this.withoutHeader(channel) } : {}),
    } as Subscription;
    return {
      resource: stored as unknown as Resource,
      afterWrite: (saved) => this.keepChannelSecret(saved.id as string, channel?.endpoint, header, previous),
    };
  }

  /**
   * The status a client's write leads to. Clients ask for `requested` (or `active`, which strict
   * servers read as the same request) or `off`; only a handshake makes a subscription active, so
   * `active` is kept only for an edit of an active subscription that leaves its channel alone.
   */
  private statusForClientWrite(
    subscription: Subscription,
    previous: Subscription | undefined,
  ): Subscription['status'] {
    switch (subscription.status) {
      case 'off':
      case 'requested':
        return subscription.status;
      case 'active':
        return previous?.status === 'active' && !this.channelChanged(subscription, previous)
          ? 'active'
          : 'requested';
      case 'error':
        if (previous?.status === 'error') return 'error';
        throw refusal(
          'Subscription.status error is set by the server when notifications cannot be delivered; ask for requested',
          'Subscription.status',
        );
      default:
        throw refusal('Subscription.status must be requested, active, error or off', 'Subscription.status');
    }
  }

  private channelChanged(subscription: Subscription, previous: Subscription): boolean {
    const id = previous.id as string;
    if (normalizedEndpoint(subscription.channel?.endpoint) !== normalizedEndpoint(previous.channel?.endpoint))
      return true;
    const header = subscription.channel?.header;
    if (header === undefined) return false;
    return JSON.stringify(header) !== JSON.stringify(this.channelSecrets.get(id)?.header ?? []);
  }

  private withoutHeader(channel: Subscription['channel']): Subscription['channel'] {
    const { header: _header, ...rest } = channel;
    return rest;
  }

  /**
   * Headers given with the write replace the kept ones. An update that leaves them out keeps them
   * while the endpoint stays the same (a client that read the subscription, which never shows them,
   * and wrote it back must not lose its credentials), but a secret never follows a new endpoint.
   */
  private keepChannelSecret(
    id: string,
    endpoint: string | undefined,
    header: string[] | undefined,
    previous: Subscription | undefined,
  ): void {
    const normalized = normalizedEndpoint(endpoint);
    if (header !== undefined) {
      this.channelSecrets.set(id, { endpoint: normalized, header: [...header] });
      return;
    }
    const kept = this.channelSecrets.get(id);
    if (!previous || kept?.endpoint !== normalized) this.channelSecrets.delete(id);
  }

  private onWrite(write: ResourceWrite): void {
    if (this.closed) return;
    if (write.current.resourceType === 'Subscription') this.onSubscriptionWrite(write);
    if (write.current.resourceType === 'Encounter' || write.current.resourceType === 'Appointment') {
      const previous = write.previous as unknown as Encounter | Appointment | undefined;
      const current = write.current as unknown as Encounter | Appointment;
      if (previous && previous.status === current.status) return;
      this.track(this.onFocusEvent(current, write.interaction));
    }
  }

  private onSubscriptionWrite(write: ResourceWrite): void {
    const subscription = write.current as unknown as Subscription;
    this.scheduleHeartbeats(subscription);
    // The server's own status changes start nothing; a client asking for `requested` gets a handshake.
    if (write.byServer || subscription.status !== 'requested') return;
    void this.enqueue({ subscription, type: 'handshake' });
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
      void this.heartbeat(id).catch(() => {
        // Deleted: stop beating for it.
        clearInterval(timer);
        this.heartbeats.delete(id);
      });
    }, periodMs);
    // Heartbeats must not keep a finished process alive.
    timer.unref();
    this.heartbeats.set(id, { period, timer });
  }

  private unsupportedReason(
    subscription: Subscription,
  ): { diagnostics: string; expression: string } | undefined {
    if (subscription.channel?.type !== 'rest-hook')
      return {
        diagnostics: 'only rest-hook channels are supported by this sandbox',
        expression: 'Subscription.channel.type',
      };
    if (!this.endpointAllowed(subscription.channel.endpoint))
      return {
        diagnostics:
          'Subscription.channel.endpoint is not an allowed notification endpoint: this sandbox notifies only ' +
          "the service's own /notify endpoint and the endpoints listed in sandbox.subscriptionEndpoints, " +
          'compared exactly (no other path, user info or fragment)',
        expression: 'Subscription.channel.endpoint',
      };
    const criteria = subscription.criteria ?? '';
    if (!/^https?:\/\//.test(criteria) && !/^(Encounter|Appointment)(\?|$)/.test(criteria))
      return {
        diagnostics: 'only Encounter or Appointment criteria or a topic URL are supported by this sandbox',
        expression: 'Subscription.criteria',
      };
    return undefined;
  }

  /**
   * The server's own status change, written only if the subscription is still the version this
   * decision was made on: a client's newer write (switched off, new endpoint) wins.
   */
  private async setStatus(
    subscription: Subscription,
    status: 'active' | 'error',
    error?: string,
  ): Promise<void> {
    const { error: _previousError, ...rest } = subscription;
    const written = await this.repository.updateAsServer(
      { ...rest, status, ...(error ? { error } : {}) } as unknown as Resource,
      subscription.meta?.versionId,
    );
    if (written)
      this.options.logger.info({ subscriptionId: subscription.id, status }, 'sandbox-subscription-status');
  }

  private async onFocusEvent(
    focus: Encounter | Appointment,
    interaction: 'create' | 'update',
  ): Promise<void> {
    const timestamp = new Date().toISOString();
    const bundle = await this.repository.search({ resourceType: 'Subscription', count: 1000 });
    for (const entry of bundle.entry ?? []) {
      const subscription = entry.resource as unknown as Subscription;
      // Events still count while in error, so a subscription asked to start again reveals through its
      // counter (and `$events`) what it missed; before its first handshake it has no events at all.
      if (subscription.status !== 'active' && subscription.status !== 'error') continue;
      // A subscription past its `end` is over, as on a real server.
      if (subscription.end && Date.parse(subscription.end) < Date.now()) continue;
      if (this.unsupportedReason(subscription) || !this.matches(subscription, focus)) continue;
      const id = subscription.id!;
      const eventNumber = (this.eventCounts.get(id) ?? 0) + 1;
      this.eventCounts.set(id, eventNumber);
      const event: SubscriptionEvent = { eventNumber, timestamp, focus, interaction };
      const log = this.eventLogs.get(id) ?? [];
      log.push(event);
      if (log.length > eventLogLimit) log.splice(0, log.length - eventLogLimit);
      this.eventLogs.set(id, log);
      if (subscription.status === 'active')
        void this.enqueue({ subscription, type: 'event-notification', event });
    }
  }

  /** Whether the subscription asks for this event: its type (a topic URL is the encounter topic), then its filters. */
  private matches(subscription: Subscription, focus: Encounter | Appointment): boolean {
    const criteria = subscription.criteria ?? '';
    const type = /^https?:\/\//.test(criteria) ? 'Encounter' : criteria.replace(/\?.*$/, '');
    if (type !== focus.resourceType) return false;
    const filters = /^https?:\/\//.test(criteria)
      ? (subscription._criteria?.extension ?? [])
          .filter((extension) => extension.url === filterCriteriaUrl && extension.valueString)
          .map((extension) => extension.valueString as string)
      : [criteria];
    return filters.every((filter) => {
      const query = filter.replace(new RegExp(`^${type}[.?]?`), '');
      if (!query) return true;
      const normalized = query.replace(/(^|&)patient=(?!Patient\/)([^&]+)/g, '$1patient=Patient/$2');
      return matchesSearchRequest(focus as unknown as Resource, parseSearchRequest(`${type}?${normalized}`));
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

  /**
   * The subscription as it is now, if this job is still due: a handshake only for the very version
   * that asked for it, anything else only while active. What was queued before a subscription
   * stopped, moved or was deleted is dropped, not sent.
   */
  private async stillDue(job: DeliveryJob): Promise<Subscription | undefined> {
    const current = (await this.repository
      .readResource('Subscription', job.subscription.id!)
      .catch(() => undefined)) as unknown as Subscription | undefined;
    if (!current) return undefined;
    if (job.type === 'handshake')
      return current.status === 'requested' && current.meta?.versionId === job.subscription.meta?.versionId
        ? current
        : undefined;
    if (current.status !== 'active') return undefined;
    if (current.end && Date.parse(current.end) < Date.now()) return undefined;
    return current;
  }

  private async deliver(job: DeliveryJob): Promise<void> {
    const id = job.subscription.id!;
    let subscription = await this.stillDue(job);
    if (!subscription || this.closed) return;
    const channel = subscription.channel;
    // Checked again at the moment of sending, and what is called is the very URL that was checked.
    const endpoint = normalizedEndpoint(channel.endpoint);
    if (!endpoint || !this.endpointAllowed(endpoint)) return;
    const headers: Record<string, string> = {};
    for (const line of this.channelSecrets.get(id)?.header ?? []) {
      const { name, value } = parseHeaderLine(line) ?? {};
      if (name && value !== undefined && !reservedHeaders.has(name)) headers[name] = value;
    }
    headers['content-type'] = channel.payload ?? 'application/fhir+json';
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
    let delivered = false;
    for (const delay of [0, ...this.options.retryDelaysMs]) {
      if (delay) {
        await this.sleep(delay);
        // Switched off, moved or deleted while waiting: stop trying.
        subscription = await this.stillDue(job);
        if (!subscription) return;
      }
      if (this.closed) return;
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
        delivered = response.status >= 200 && response.status < 300;
      } catch {
        httpStatus = undefined;
      } finally {
        clearTimeout(timer);
        this.controllers.delete(controller);
      }
      if (delivered) break;
    }
    if (this.closed) return;
    if (delivered) this.lastSent.set(id, Date.now());
    this.record({
      subscriptionId: id,
      type: job.type,
      eventNumber: job.event?.eventNumber,
      focus: job.event ? `${job.event.focus.resourceType}/${job.event.focus.id}` : undefined,
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
    if (job.type === 'handshake') {
      if (delivered) await this.setStatus(subscription, 'active');
      else
        await this.setStatus(
          subscription,
          'error',
          `the handshake was not accepted: ${this.failure(attempts, httpStatus)}`,
        );
    } else if (!delivered) {
      await this.setStatus(
        subscription,
        'error',
        `a ${job.type} could not be delivered: ${this.failure(attempts, httpStatus)}`,
      );
    }
  }

  private failure(attempts: number, httpStatus: number | undefined): string {
    const last = httpStatus === undefined ? 'no response' : `HTTP ${httpStatus}`;
    return `${attempts} attempt${attempts === 1 ? '' : 's'}, last: ${last}`;
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
