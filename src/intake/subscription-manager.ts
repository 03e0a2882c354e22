import type { Extension, Subscription } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';

/**
 * Makes sure the service's own Subscription exists on the FHIR server: found by its endpoint and its
 * criteria (classic) or topic (Backport), created when missing, reactivated when the server switched
 * it off. The bearer secret goes into channel.header so the server authenticates its notifications, on
 * creation and on every update (a server may treat an update without the header as its removal, and
 * many never show the header in a read).
 * Medplum gets the only shape it delivers: a classic rest-hook created `active` (it never moves a
 * `requested` one on), signed with the subscription-secret extension instead of a bearer header.
 * Used at start and by `npm run subscription -- list|check|recreate`.
 */
export interface SubscriptionSpec {
  /** Where the server should POST: the service's public URL + /notify. */
  endpoint: string;
  mode: 'backport' | 'classic';
  topic: string;
  criteria: string;
  payload: 'id-only' | 'full-resource' | 'empty';
  heartbeatSeconds: number;
  secret: string | undefined;
  /** `medplum`: classic rest-hook, status active, signed with `medplumSecret`. Absent: generic. */
  server?: 'medplum' | 'generic';
  /** The HMAC secret Medplum signs deliveries with (X-Signature); required when `server` is medplum. */
  medplumSecret?: string;
  /** `fhir.declareProfiles` (default true): whether the Backport Subscription declares its profile. */
  declareProfiles?: boolean;
}

export type EnsureAction = 'found' | 'created' | 'reactivated' | 'recreated';

export const medplumSecretExtensionUrl =
  'https://www.medplum.com/fhir/StructureDefinition/subscription-secret';

function isMedplum(spec: SubscriptionSpec): boolean {
  return spec.server === 'medplum';
}

function medplumSecretOf(subscription: Subscription): string | undefined {
  return subscription.extension?.find((extension) => extension.url === medplumSecretExtensionUrl)
    ?.valueString;
}

function withMedplumSecret(extensions: Extension[] | undefined, secret: string): Extension[] {
  return [
    ...(extensions ?? []).filter((extension) => extension.url !== medplumSecretExtensionUrl),
    { url: medplumSecretExtensionUrl, valueString: secret },
  ];
}

/** The status that asks the server to deliver again: Medplum delivers only `active`, others handshake from `requested`. */
export function reactivationStatus(spec: Pick<SubscriptionSpec, 'server'>): 'active' | 'requested' {
  return spec.server === 'medplum' ? 'active' : 'requested';
}

const backport = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';

function bearerHeader(spec: SubscriptionSpec): string[] | undefined {
  return spec.secret ? [`Authorization: Bearer ${spec.secret}`] : undefined;
}

/**
 * The Subscription as it goes back to the server in an update: the bearer header sent again (a read rarely
 * shows it, and an update without it can remove it), and meta.profile dropped when profiles are not declared
 * (Medplum would look the profile up). Medplum's own Subscription keeps its channel: the HMAC secret
 * authenticates it, not a header.
 */
function forUpdate(subscription: Subscription, spec: SubscriptionSpec): Subscription {
  const header = isMedplum(spec) ? undefined : bearerHeader(spec);
  const { profile: _profile, ...metaWithoutProfile } = subscription.meta ?? {};
  return {
    ...subscription,
    ...(spec.declareProfiles === false && subscription.meta ? { meta: metaWithoutProfile } : {}),
    channel: { ...subscription.channel, ...(header ? { header } : {}) },
  };
}

export function buildSubscription(spec: SubscriptionSpec): Subscription {
  const header = bearerHeader(spec);
  if (isMedplum(spec)) {
    if (!spec.medplumSecret) throw new Error('a Medplum subscription needs its subscription secret');
    return {
      resourceType: 'Subscription',
      status: 'active',
      reason: 'EHR draft agent: encounter events for draft notes',
      criteria: spec.criteria,
      extension: withMedplumSecret(undefined, spec.medplumSecret),
      // No bearer header: the HMAC authenticates, and Medplum would keep a second credential in the resource.
      channel: { type: 'rest-hook', endpoint: spec.endpoint, payload: 'application/fhir+json' },
    };
  }
  if (spec.mode === 'classic') {
    return {
      resourceType: 'Subscription',
      status: 'requested',
      reason: 'EHR draft agent: encounter events for draft notes',
      criteria: spec.criteria,
      channel: {
        type: 'rest-hook',
        endpoint: spec.endpoint,
        ...(spec.payload === 'empty' ? {} : { payload: 'application/fhir+json' }),
        ...(header ? { header } : {}),
      },
    };
  }
  return {
    resourceType: 'Subscription',
    ...(spec.declareProfiles === false ? {} : { meta: { profile: [`${backport}/backport-subscription`] } }),
    status: 'requested',
    reason: 'EHR draft agent: encounter events for draft notes',
    criteria: spec.topic,
    _criteria: {
      extension: [{ url: `${backport}/backport-filter-criteria`, valueString: spec.criteria }],
    },
    channel: {
      extension: spec.heartbeatSeconds
        ? [{ url: `${backport}/backport-heartbeat-period`, valueUnsignedInt: spec.heartbeatSeconds }]
        : [],
      type: 'rest-hook',
      endpoint: spec.endpoint,
      payload: 'application/fhir+json',
      _payload: { extension: [{ url: `${backport}/backport-payload-content`, valueCode: spec.payload }] },
      ...(header ? { header } : {}),
    },
  } as Subscription;
}

function isOurs(subscription: Subscription, spec: SubscriptionSpec): boolean {
  if (subscription.channel?.endpoint !== spec.endpoint) return false;
  return spec.mode === 'classic' || isMedplum(spec)
    ? subscription.criteria === spec.criteria
    : subscription.criteria === spec.topic;
}

/** The service's subscriptions on the server (matching endpoint and criteria or topic). */
export async function findSubscriptions(fhir: FhirClient, spec: SubscriptionSpec): Promise<Subscription[]> {
  const found = await fhir.search<Subscription>('Subscription', { url: spec.endpoint });
  return found.filter((subscription) => isOurs(subscription, spec));
}

export async function ensureSubscription(
  fhir: FhirClient,
  spec: SubscriptionSpec,
  options: { recreate?: boolean } = {},
): Promise<{ subscription: Subscription; action: EnsureAction }> {
  const existing = await findSubscriptions(fhir, spec);
  const usable = existing.find((subscription) =>
    isMedplum(spec)
      ? subscription.status === 'active' && medplumSecretOf(subscription) === spec.medplumSecret
      : subscription.status === 'active' || subscription.status === 'requested',
  );
  if (usable && !options.recreate) return { subscription: usable, action: 'found' };
  const stopped = existing[0];
  if (stopped && !options.recreate) {
    // Switched off after failed deliveries (or, on Medplum, left `requested` or with another secret):
    // ask for it again rather than piling up copies.
    const subscription = await fhir.update<Subscription>({
      ...forUpdate(stopped, spec),
      status: reactivationStatus(spec),
      ...(isMedplum(spec) && spec.medplumSecret
        ? { extension: withMedplumSecret(stopped.extension, spec.medplumSecret) }
        : {}),
    });
    return { subscription, action: 'reactivated' };
  }
  for (const old of existing) {
    // Replaced, not deleted: the server keeps its history, and it stops sending to this one.
    if (old.id) await fhir.update<Subscription>({ ...forUpdate(old, spec), status: 'off' });
  }
  const { resource } = await fhir.create(buildSubscription(spec));
  return { subscription: resource, action: existing.length > 0 ? 'recreated' : 'created' };
}
