import { randomUUID } from 'node:crypto';
import type {
  Appointment,
  Bundle,
  BundleEntry,
  Encounter,
  Parameters,
  ParametersParameter,
  Subscription,
} from 'fhir/r4.js';

/**
 * The Backport IG's R4 notification shapes: a `history` Bundle whose first entry is the
 * subscription status Parameters, then one entry per focus resource (id-only: fullUrl with
 * request/response; full-resource: with the resource; empty: none). `$status` answers a
 * `searchset` of status Parameters.
 */
export const backportProfiles = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';

export type NotificationType =
  | 'handshake'
  | 'heartbeat'
  | 'event-notification'
  | 'query-status'
  | 'query-event';
export type PayloadContent = 'empty' | 'id-only' | 'full-resource';

/** One event as the sandbox remembers it, for delivery and for `$events`. */
export interface SubscriptionEvent {
  eventNumber: number;
  timestamp: string;
  /** The resource the event is about: an Encounter, or an Appointment for `Appointment?...` criteria. */
  focus: Encounter | Appointment;
  interaction: 'create' | 'update';
}

export interface StatusContext {
  subscription: Subscription;
  /** Absolute (or base-relative when the base is unknown) references are made with this. */
  absolute: (relative: string) => string;
  eventsSinceStart: number;
  type: NotificationType;
}

export function payloadContent(subscription: Subscription): PayloadContent {
  const value = subscription.channel._payload?.extension?.find(
    (extension) => extension.url === `${backportProfiles}/backport-payload-content`,
  )?.valueCode;
  return value === 'empty' || value === 'full-resource' ? value : 'id-only';
}

export function topicOf(subscription: Subscription, absolute: (relative: string) => string): string {
  const criteria = subscription.criteria ?? '';
  // Classic `Encounter?...` or `Appointment?...` criteria have no topic: name the sandbox's own for the type.
  if (/^https?:\/\//.test(criteria)) return criteria;
  return absolute(
    criteria.startsWith('Appointment')
      ? 'SubscriptionTopic/appointment-status'
      : 'SubscriptionTopic/encounter-status',
  );
}

export function statusParameters(context: StatusContext, events: SubscriptionEvent[]): Parameters {
  const { subscription, absolute, type } = context;
  const content = payloadContent(subscription);
  // As stored: a subscription is never reported active before its handshake was answered.
  const status = type === 'handshake' ? 'requested' : subscription.status;
  const parameter: ParametersParameter[] = [
    { name: 'subscription', valueReference: { reference: absolute(`Subscription/${subscription.id}`) } },
    { name: 'topic', valueCanonical: topicOf(subscription, absolute) },
    { name: 'status', valueCode: status },
    { name: 'type', valueCode: type },
    { name: 'events-since-subscription-start', valueString: String(context.eventsSinceStart) },
  ];
  for (const event of events) {
    const part: ParametersParameter[] = [
      { name: 'event-number', valueString: String(event.eventNumber) },
      { name: 'timestamp', valueInstant: event.timestamp },
    ];
    if (content !== 'empty')
      part.push({
        name: 'focus',
        valueReference: { reference: absolute(`${event.focus.resourceType}/${event.focus.id}`) },
      });
    parameter.push({ name: 'notification-event', part });
  }
  // The Backport status Parameters' `error` (0..*): why the server stopped notifying.
  if (subscription.status === 'error' && subscription.error)
    parameter.push({ name: 'error', valueCodeableConcept: { text: subscription.error } });
  return {
    resourceType: 'Parameters',
    id: randomUUID(),
    meta: { profile: [`${backportProfiles}/backport-subscription-status-r4`] },
    parameter,
  };
}

export function notificationBundle(context: StatusContext, events: SubscriptionEvent[]): Bundle {
  const { subscription, absolute } = context;
  const status = statusParameters(context, events);
  const content = payloadContent(subscription);
  const focusEntries: BundleEntry[] =
    content === 'empty'
      ? []
      : events.map((event) => {
          const created = event.interaction === 'create';
          const type = event.focus.resourceType;
          return {
            fullUrl: absolute(`${type}/${event.focus.id}`),
            ...(content === 'full-resource' ? { resource: event.focus } : {}),
            request: {
              method: created ? 'POST' : 'PUT',
              url: created ? type : `${type}/${event.focus.id}`,
            },
            response: { status: created ? '201' : '200' },
          };
        });
  return {
    resourceType: 'Bundle',
    id: randomUUID(),
    meta: { profile: [`${backportProfiles}/backport-subscription-notification-r4`] },
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: [
      {
        fullUrl: `urn:uuid:${status.id}`,
        resource: status,
        request: { method: 'GET', url: `${absolute(`Subscription/${subscription.id}`)}/$status` },
        response: { status: '200' },
      },
      ...focusEntries,
    ],
  };
}

export function statusSearchset(statuses: Parameters[]): Bundle {
  return {
    resourceType: 'Bundle',
    id: randomUUID(),
    type: 'searchset',
    total: statuses.length,
    entry: statuses.map((resource) => ({
      fullUrl: `urn:uuid:${resource.id}`,
      resource,
      search: { mode: 'match' },
    })),
  };
}
