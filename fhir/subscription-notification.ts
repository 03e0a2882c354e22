import { z } from 'zod';
import { isFhirId } from './fhir-id.ts';
import { outcomeError } from './operation-outcome.ts';

/**
 * Parses FHIR Subscriptions Backport IG (R4) notification bundles. Strict about the structure that
 * matters (a history Bundle whose first entry is the status Parameters), lenient where real servers
 * are known to differ: valueDate timestamps, relative focus, a valueString subscription, counts as
 * numeric strings, a missing entry.request.
 */
const parameterSchema = z.looseObject({
  name: z.string(),
  valueString: z.string().optional(),
  valueCode: z.string().optional(),
  valueCanonical: z.string().optional(),
  valueUri: z.string().optional(),
  valueInstant: z.string().optional(),
  valueDateTime: z.string().optional(),
  valueDate: z.string().optional(),
  valueInteger: z.number().optional(),
  valueUnsignedInt: z.number().optional(),
  valueDecimal: z.number().optional(),
  valueReference: z.looseObject({ reference: z.string().optional() }).optional(),
  get part() {
    return z.array(parameterSchema).optional();
  },
});
type Parameter = z.infer<typeof parameterSchema>;

export const notificationBundleSchema = z.looseObject({
  resourceType: z.literal('Bundle', { error: 'expected a Bundle' }),
  type: z.literal('history', { error: 'expected Bundle.type "history"' }),
  entry: z
    .array(
      z.looseObject({
        fullUrl: z.string().optional(),
        resource: z.looseObject({ resourceType: z.string() }).optional(),
      }),
    )
    .min(1, 'a notification bundle has at least the status Parameters entry'),
});

export const notificationTypes = [
  'handshake',
  'heartbeat',
  'event-notification',
  'query-status',
  'query-event',
] as const;
export type NotificationType = (typeof notificationTypes)[number];

/** Subscription.status codes (R4); any other value is dropped rather than kept in intake state. */
const subscriptionStatuses = ['requested', 'active', 'error', 'off', 'entered-in-error'] as const;

export interface NotificationEvent {
  /** Event number on the subscription, when the server sends one. */
  eventNumber: number | undefined;
  timestamp: string | undefined;
  /** `Encounter/<id>` when the focus names an Encounter; undefined for an empty payload. */
  focus: string | undefined;
  /** The full resource, when the payload is full-resource. */
  resource: Record<string, unknown> | undefined;
}

export interface ParsedNotification {
  subscription: string;
  topic: string | undefined;
  status: string | undefined;
  type: NotificationType;
  eventsSinceSubscriptionStart: number | undefined;
  events: NotificationEvent[];
}

function numberFrom(parameter: Parameter | undefined): number | undefined {
  const raw =
    parameter?.valueString ??
    parameter?.valueInteger ??
    parameter?.valueUnsignedInt ??
    parameter?.valueDecimal;
  if (raw === undefined) return undefined;
  const value = typeof raw === 'number' ? raw : Number(raw.trim());
  if (!Number.isSafeInteger(value) || value < 0) {
    throw outcomeError('invalid', `${parameter?.name} must be a non-negative whole number`, 422);
  }
  return value;
}

const find = (parameters: Parameter[] | undefined, name: string) =>
  parameters?.find((parameter) => parameter.name === name);

/** `Type/id` from an absolute or relative reference, dropping any `_history` suffix. */
export function relativeReference(reference: string | undefined): string | undefined {
  if (!reference) return undefined;
  const match =
    /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?\/?$/.exec(
      reference.trim(),
    );
  return match && isFhirId(match[2]) ? `${match[1]}/${match[2]}` : undefined;
}

/** Longest subscription reference accepted: real ones are a URL of a few dozen characters. */
export const maxSubscriptionReferenceLength = 1_024;

/**
 * Deepest `part` nesting accepted under Parameters.parameter. The Backport shape uses two levels
 * (notification-event, then its parts); a little room is left for extensions of the shape. The limit
 * is checked before the recursive schema runs, so a hostile depth cannot exhaust the stack.
 */
const maxParameterDepth = 4;

/** Whether parameters nest `part` deeper than the limit; iterative, so any depth is measured safely. */
function nestsTooDeep(parameters: unknown, limit: number): boolean {
  const pending: { value: unknown; depth: number }[] = [{ value: parameters, depth: 1 }];
  while (pending.length > 0) {
    const { value, depth } = pending.pop() as { value: unknown; depth: number };
    if (!Array.isArray(value)) continue;
    if (depth > limit) return true;
    for (const parameter of value) {
      const part = (parameter as { part?: unknown } | null)?.part;
      if (part !== undefined) pending.push({ value: part, depth: depth + 1 });
    }
  }
  return false;
}

/** An instant is at most 35 characters; anything much longer is not one and is not kept. */
const maxTimestampLength = 64;

export function parseNotification(body: unknown): ParsedNotification {
  const bundle = notificationBundleSchema.safeParse(body);
  if (!bundle.success) {
    const issue = bundle.error.issues[0];
    throw outcomeError(
      'invalid',
      `not a subscription notification: ${issue.path.join('.') || 'Bundle'}: ${issue.message}`,
      400,
    );
  }
  const statusResource = bundle.data.entry[0].resource;
  if (statusResource?.resourceType !== 'Parameters') {
    throw outcomeError(
      'invalid',
      'the first entry of a notification bundle must be a Parameters (subscription status)',
      400,
    );
  }
  if (nestsTooDeep(statusResource.parameter, maxParameterDepth))
    throw outcomeError(
      'too-costly',
      `subscription status parameters nest deeper than ${maxParameterDepth} levels`,
      400,
    );
  const parsedParameters = z.array(parameterSchema).safeParse(statusResource.parameter);
  if (!parsedParameters.success)
    throw outcomeError('invalid', 'subscription status Parameters.parameter is malformed', 400);
  const parameters = parsedParameters.data;

  const subscriptionParameter = find(parameters, 'subscription');
  const subscription =
    subscriptionParameter?.valueReference?.reference ??
    subscriptionParameter?.valueString ??
    subscriptionParameter?.valueUri;
  if (!subscription) throw outcomeError('required', 'subscription status has no subscription parameter', 422);
  if (subscription.length > maxSubscriptionReferenceLength)
    throw outcomeError(
      'too-long',
      `the subscription parameter is longer than ${maxSubscriptionReferenceLength} characters`,
      400,
    );
  const type = find(parameters, 'type')?.valueCode;
  if (!notificationTypes.includes(type as NotificationType)) {
    throw outcomeError('invalid', `unknown notification type ${JSON.stringify(type)}`, 422);
  }

  // Resources after the status entry, by their fullUrl, for full-resource payloads.
  const resourcesByReference = new Map<string, Record<string, unknown>>();
  for (const entry of bundle.data.entry.slice(1)) {
    const reference =
      relativeReference(entry.fullUrl) ??
      (entry.resource?.id ? `${entry.resource.resourceType}/${entry.resource.id}` : undefined);
    if (reference && entry.resource) resourcesByReference.set(reference, entry.resource);
  }

  const events = parameters
    .filter((parameter) => parameter.name === 'notification-event')
    .map((parameter): NotificationEvent => {
      const parts = parameter.part;
      const timestampPart = find(parts, 'timestamp');
      const focusReference = find(parts, 'focus')?.valueReference?.reference;
      const focus = relativeReference(focusReference);
      if (focusReference && !focus)
        throw outcomeError('invalid', 'notification-event focus is not a resource reference', 422);
      const timestamp =
        timestampPart?.valueInstant ?? timestampPart?.valueDateTime ?? timestampPart?.valueDate;
      return {
        eventNumber: numberFrom(find(parts, 'event-number')),
        // Kept with each seen event number: a string that is no instant is not stored.
        timestamp: timestamp && timestamp.length <= maxTimestampLength ? timestamp : undefined,
        focus,
        resource: focus ? resourcesByReference.get(focus) : undefined,
      };
    });

  return {
    subscription,
    topic: find(parameters, 'topic')?.valueCanonical ?? find(parameters, 'topic')?.valueUri,
    status: subscriptionStatuses.find((status) => status === find(parameters, 'status')?.valueCode),
    type: type as NotificationType,
    eventsSinceSubscriptionStart: numberFrom(find(parameters, 'events-since-subscription-start')),
    events,
  };
}
