import type { Subscription } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import {
  ensureSubscription,
  findSubscriptions,
  type SubscriptionSpec,
} from '../../src/intake/subscription-manager.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';
import {
  draftsByEncounter,
  type IntakeHarness,
  notifySecret,
  startIntakeHarness,
  waitFor,
} from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';

/**
 * The service's Subscription on the server (ensured, found, reactivated, recreated), and the
 * heartbeat watchdog: a silent subscription is asked for $status, its missed events fetched with
 * $events, the server reconciled by polling, and the subscription reactivated.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('subscription ensure', () => {
  it('creates once with the bearer header, finds it again, reactivates it, and recreates on request', async () => {
    const standIn: FhirStandIn = await startFhirStandIn();
    cleanups.push(() => standIn.close());
    const fhir = new FhirClient({ baseUrl: standIn.url });
    const spec: SubscriptionSpec = {
      endpoint: 'http://service.example/notify',
      mode: 'backport',
      topic: 'http://hl7.org/SubscriptionTopic/encounter-change',
      criteria: 'Encounter?',
      payload: 'id-only',
      heartbeatSeconds: 60,
      secret: notifySecret,
    };
    const created = await ensureSubscription(fhir, spec);
    expect(created.action).toBe('created');
    expect(created.subscription.channel.header).toEqual([`Authorization: Bearer ${notifySecret}`]);
    expect(created.subscription.criteria).toBe(spec.topic);
    expect((await ensureSubscription(fhir, spec)).action).toBe('found');
    expect(standIn.all('Subscription')).toHaveLength(1);

    standIn.write({ ...standIn.all('Subscription')[0], status: 'error' });
    const reactivated = await ensureSubscription(fhir, spec);
    expect(reactivated.action).toBe('reactivated');
    expect(reactivated.subscription.status).toBe('requested');

    const recreated = await ensureSubscription(fhir, spec, { recreate: true });
    expect(recreated.action).toBe('recreated');
    const all = standIn.all('Subscription') as unknown as Subscription[];
    expect(all.map((subscription) => subscription.status).sort()).toEqual(['off', 'requested']);
    // A classic subscription for the same endpoint is a different one.
    expect(await findSubscriptions(fhir, { ...spec, mode: 'classic' })).toHaveLength(0);
  });
});

describe('subscription updates and profiles', () => {
  const spec: SubscriptionSpec = {
    endpoint: 'http://service.example/notify',
    mode: 'backport',
    topic: 'http://hl7.org/SubscriptionTopic/encounter-change',
    criteria: 'Encounter?',
    payload: 'id-only',
    heartbeatSeconds: 60,
    secret: notifySecret,
  };
  const backportProfile =
    'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription';

  it('re-sends the bearer header on every update, though the server never shows it in a read', async () => {
    const updates: Subscription[] = [];
    const standIn = await startFhirStandIn({
      refuseWrite: (resource, interaction) => {
        if (resource.resourceType === 'Subscription' && interaction === 'update')
          updates.push(structuredClone(resource) as unknown as Subscription);
        return undefined;
      },
    });
    cleanups.push(() => standIn.close());
    const fhir = new FhirClient({ baseUrl: standIn.url });
    for (const mode of ['backport', 'classic'] as const) {
      updates.length = 0;
      const created = await ensureSubscription(fhir, { ...spec, mode });
      // Switched off after failed deliveries, and shown without its header, as many servers show it: an
      // update that leaves the header out would remove it on a server that treats omission as removal.
      const { header: _header, ...channelAsShown } = created.subscription.channel;
      standIn.write({ ...created.subscription, status: 'error', channel: channelAsShown } as never);

      const reactivated = await ensureSubscription(fhir, { ...spec, mode });
      expect(reactivated.action, mode).toBe('reactivated');
      expect(updates.at(-1)?.channel.header, mode).toEqual([`Authorization: Bearer ${notifySecret}`]);
      const stored = standIn.get(
        'Subscription',
        created.subscription.id as string,
      ) as unknown as Subscription;
      expect(stored.channel.header, mode).toEqual([`Authorization: Bearer ${notifySecret}`]);

      // A recreation switches the old one off: that update carries the header too.
      await ensureSubscription(fhir, { ...spec, mode }, { recreate: true });
      expect(updates.at(-1)?.status, mode).toBe('off');
      expect(updates.at(-1)?.channel.header, mode).toEqual([`Authorization: Bearer ${notifySecret}`]);
    }
  });

  it('declares the Backport profile only while fhir.declareProfiles is true, on creation and on updates', async () => {
    const standIn = await startFhirStandIn();
    cleanups.push(() => standIn.close());
    const fhir = new FhirClient({ baseUrl: standIn.url });
    const declared = await ensureSubscription(fhir, spec);
    expect(declared.subscription.meta?.profile).toEqual([backportProfile]);

    // The same Subscription, switched off, reactivated by a service that no longer declares profiles.
    standIn.write({ ...standIn.all('Subscription')[0], status: 'error' });
    const reactivated = await ensureSubscription(fhir, { ...spec, declareProfiles: false });
    expect(reactivated.action).toBe('reactivated');
    expect(reactivated.subscription.meta?.profile).toBeUndefined();
    const recreated = await ensureSubscription(fhir, { ...spec, declareProfiles: false }, { recreate: true });
    expect(recreated.subscription.meta?.profile).toBeUndefined();
    expect(recreated.subscription.criteria).toBe(spec.topic);
  });

  it('the service passes fhir.declareProfiles to the Subscription it ensures at start', async () => {
    const harness = await startIntakeHarness({
      fhir: { declareProfiles: false },
      intake: { sources: { backport: true }, subscription: { ensureOnStart: true, mode: 'backport' } },
    });
    cleanups.push(() => harness.close());
    const [ensured] = await waitFor(async () => {
      const all = harness.standIn.all('Subscription') as unknown as Subscription[];
      return all.length > 0 ? all : undefined;
    }, 'the service to create its Subscription');
    expect(ensured.channel.endpoint).toBe(`${harness.service.url}/notify`);
    expect(ensured.meta?.profile).toBeUndefined();
  });
});

describe('heartbeat watchdog', () => {
  it('a silent subscription: $status, missed events via $events, reconcile, reactivation', async () => {
    const harness: IntakeHarness = await startIntakeHarness({
      intake: {
        heartbeat: { periodMs: 400, checkIntervalMs: 100 },
        gapGraceMs: 100,
        trackedSubscriptions: ['silent'],
      },
    });
    cleanups.push(() => harness.close());
    const ids = seedEncounters(harness.standIn, 2);
    harness.standIn.write({
      resourceType: 'Subscription',
      id: 'silent',
      status: 'active',
      channel: { type: 'rest-hook', endpoint: `${harness.service.url}/notify` },
    });
    const subscription = `${harness.standIn.url}/Subscription/silent`;
    await harness.post('/notify', notificationBundle({ subscription, type: 'handshake', counter: 0 }));
    // The server then sends two events that never arrive, and switches the subscription to error.
    for (const id of ids) harness.standIn.recordEvent('silent', `Encounter/${id}`);
    const log = harness.standIn.subscriptions.get('silent');
    if (log) log.status = 'error';

    await waitFor(
      () => ids.every((id) => draftsByEncounter(harness.standIn).get(id) === 1),
      'drafts of the missed events',
    );
    const requested = (check: (request: string) => boolean, what: string) =>
      waitFor(() => harness.standIn.requests.some(check), what);
    await requested((request) => request === 'GET /Subscription/silent/$status', '$status');
    // $status reported two events we never got: after the grace period $events fetches them.
    await requested(
      (request) =>
        request.startsWith('GET /Subscription/silent/$events?eventsSinceNumber=1&eventsUntilNumber=2'),
      '$events',
    );
    await requested((request) => request.startsWith('GET /Encounter?_lastUpdated'), 'a reconcile');
    await requested((request) => request === 'PUT /Subscription/silent', 'reactivation');
    expect((harness.standIn.all('Subscription')[0] as { status?: string }).status).toBe('requested');
    expect(
      await harness.metric('ehr_agent_reconciliations_total', {
        reason: 'heartbeat-missed',
        outcome: 'done',
      }),
    ).toBeGreaterThan(0);
  });

  it('never calls back a host that is not the FHIR server or on the allow-list', async () => {
    const harness: IntakeHarness = await startIntakeHarness({
      intake: {
        heartbeat: { periodMs: 200, checkIntervalMs: 50 },
        trackedSubscriptions: ['https://elsewhere.example/fhir/Subscription/silent'],
      },
    });
    cleanups.push(() => harness.close());
    await harness.post(
      '/notify',
      notificationBundle({
        subscription: 'https://elsewhere.example/fhir/Subscription/silent',
        type: 'handshake',
        counter: 0,
      }),
    );
    await waitFor(
      async () =>
        (await harness.metric('ehr_agent_reconciliations_total', {
          reason: 'heartbeat-missed',
          outcome: 'done',
        })) > 0,
      'a reconcile for the silent subscription',
    );
    expect(harness.standIn.requests.some((request) => request.includes('$status'))).toBe(false);
  });
});
