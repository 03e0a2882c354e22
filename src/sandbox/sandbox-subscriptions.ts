import { randomUUID } from 'node:crypto';
import { matchesSearchRequest, parseSearchRequest } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { Bundle, Encounter, Parameters, ParametersParameter, Subscription } from 'fhir/r4.js';
import { type Logger, silentLogger } from '../log.ts';
import type { ObservedRepository, ResourceWrite } from './observed-repository.ts';

/**
 * Subscriptions as the FHIR Subscriptions Backport IG (R4) describes them, for Encounter events only:
 * a Subscription created through the sandbox's API (classic `Encounter?...` criteria, or a topic URL
 * with `backport-filter-criteria`) gets a handshake, then an id-only `event-notification` Bundle for
 * every Encounter created or whose status changes, numbered per subscription. Delivery is
 * asynchronous, ordered per subscription, retried a few times, and only to allowed endpoints.
 */
const backport = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';
const filterCriteriaUrl = `${backport}/backport-filter-criteria`;
const payloadContentUrl = `${backport}/backport-payload-content`;
const timeoutUrl = `${backport}/backport-timeout`;

export type NotificationType = 'handshake' | 'heartbeat' | 'event-notification';
type PayloadContent = 'empty' | 'id-only' | 'full-resource';

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
  type: NotificationType;
  eventNumber?: number;
  focus?: { encounter: Encounter; interaction: 'create' | 'update' };
}

function extensionValue(
  extensions: { url?: string; valueString?: string; valueCode?: string }[] | undefined,
  url: string,
) {
  const extension = extensions?.find((candidate) => candidate.url === url);
  return extension?.valueString ?? extension?.valueCode;
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
    const subscription = (await this.repository.readResource(
      'Subscription',
      subscriptionId,
    )) as unknown as Subscription;
    await this.enqueue({ subscription, type: 'heartbeat' });
  }

  close(): void {
    this.closed = true;
    for (const controller of this.controllers) controller.abort();
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
    if (this.options.allowedEndpoints)
      return this.options.allowedEndpoints.some((prefix) => endpoint.startsWith(prefix));
    return isLoopbackUrl(url);
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
    const current = (await this.repository.readResource(
      'Subscription',
      subscription.id!,
    )) as unknown as Subscription;
    await this.repository.updateResource({
      ...current,
      status,
      ...(error ? { error } : {}),
    } as unknown as Resource);
    this.options.logger.info({ subscriptionId: subscription.id, status }, 'sandbox-subscription-status');
  }

  private async onEncounterEvent(encounter: Encounter, interaction: 'create' | 'update'): Promise<void> {
    const bundle = await this.repository.search({ resourceType: 'Subscription', count: 1000 });
    for (const entry of bundle.entry ?? []) {
      const subscription = entry.resource as unknown as Subscription;
      if (subscription.status !== 'active' && subscription.status !== 'requested') continue;
      // A subscription past its `end` is over, as on a real server.
      if (subscription.end && Date.parse(subscription.end) < Date.now()) continue;
      if (this.unsupportedReason(subscription) || !this.matches(subscription, encounter)) continue;
      const eventNumber = (this.eventCounts.get(subscription.id!) ?? 0) + 1;
      this.eventCounts.set(subscription.id!, eventNumber);
      void this.enqueue({
        subscription,
        type: 'event-notification',
        eventNumber,
        focus: { encounter, interaction },
      });
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
    const channel = subscription.channel;
    const endpoint = channel.endpoint ?? '';
    const headers: Record<string, string> = { 'content-type': channel.payload ?? 'application/fhir+json' };
    for (const line of channel.header ?? []) {
      const colon = line.indexOf(':');
      if (colon > 0) headers[line.slice(0, colon).trim().toLowerCase()] = line.slice(colon + 1).trim();
    }
    const timeoutSeconds = Number(extensionValue(channel.extension as never, timeoutUrl));
    const timeoutMs =
      Number.isFinite(timeoutSeconds) && timeoutSeconds > 0 ? timeoutSeconds * 1000 : this.options.timeoutMs;
    const body = JSON.stringify(this.notification(job));
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
    this.record({
      subscriptionId: subscription.id!,
      type: job.type,
      eventNumber: job.eventNumber,
      focus: job.focus ? `Encounter/${job.focus.encounter.id}` : undefined,
      endpoint,
      attempts,
      status: delivered ? 'delivered' : 'failed',
      httpStatus,
    });
    this.options.logger.info(
      {
        subscriptionId: subscription.id,
        type: job.type,
        eventNumber: job.eventNumber,
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

  notification(job: DeliveryJob): Bundle {
    const { subscription } = job;
    const criteria = subscription.criteria ?? '';
    const topic = /^https?:\/\//.test(criteria)
      ? criteria
      : this.absolute('SubscriptionTopic/encounter-status');
    const content = (extensionValue(subscription.channel._payload?.extension as never, payloadContentUrl) ??
      'id-only') as PayloadContent;
    const subscriptionReference = this.absolute(`Subscription/${subscription.id}`);
    const timestamp = new Date().toISOString();
    const parameters: ParametersParameter[] = [
      { name: 'subscription', valueReference: { reference: subscriptionReference } },
      { name: 'topic', valueCanonical: topic },
      { name: 'status', valueCode: job.type === 'handshake' ? 'requested' : 'active' },
      { name: 'type', valueCode: job.type },
      {
        name: 'events-since-subscription-start',
        valueString: String(job.eventNumber ?? this.eventCounts.get(subscription.id!) ?? 0),
      },
    ];
    const entries: NonNullable<Bundle['entry']> = [];
    if (job.type === 'event-notification' && job.focus) {
      const focusUrl = this.absolute(`Encounter/${job.focus.encounter.id}`);
      const eventParts: ParametersParameter[] = [
        { name: 'event-number', valueString: String(job.eventNumber) },
        { name: 'timestamp', valueInstant: timestamp },
      ];
      if (content !== 'empty') eventParts.push({ name: 'focus', valueReference: { reference: focusUrl } });
      parameters.push({ name: 'notification-event', part: eventParts });
      if (content !== 'empty') {
        const created = job.focus.interaction === 'create';
        entries.push({
          fullUrl: focusUrl,
          ...(content === 'full-resource' ? { resource: job.focus.encounter as never } : {}),
          request: {
            method: created ? 'POST' : 'PUT',
            url: created ? 'Encounter' : `Encounter/${job.focus.encounter.id}`,
          },
          response: { status: created ? '201' : '200' },
        });
      }
    }
    const parametersId = randomUUID();
    const status: Parameters = {
      resourceType: 'Parameters',
      id: parametersId,
      meta: { profile: [`${backport}/backport-subscription-status-r4`] },
      parameter: parameters,
    };
    return {
      resourceType: 'Bundle',
      id: randomUUID(),
      meta: { profile: [`${backport}/backport-subscription-notification-r4`] },
      type: 'history',
      timestamp,
      entry: [
        {
          fullUrl: `urn:uuid:${parametersId}`,
          resource: status,
          request: { method: 'GET', url: `${subscriptionReference}/$status` },
          response: { status: '200' },
        },
        ...entries,
      ],
    };
  }
}
