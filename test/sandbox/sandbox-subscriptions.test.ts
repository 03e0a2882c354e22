// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP requests.
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import {
  type NotificationReceiver,
  statusParameter as parameter,
  type ReceivedRequest,
  startNotificationReceiver,
} from './notification-receiver.ts';
import { fhirFetch, type RunningSandbox, startSandboxServer } from './sandbox-server.ts';

function part(notification: any, name: string): any {
  return parameter(notification, 'notification-event')?.part.find(
    (candidate: any) => candidate.name === name,
  );
}

const heartbeatPeriodUrl =
  'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period';

/** Paths the receiver serves; each is allowed exactly in the sandbox's configuration. */
const paths = [
  '/notify',
  '/heartbeat',
  '/flaky',
  '/topic',
  '/gated',
  '/refuses',
  '/breaks',
  '/moved',
  '/once',
];

describe('sandbox subscriptions (Backport IG, R4)', () => {
  let running: RunningSandbox;
  let base: string;
  let receiver: NotificationReceiver;
  /** Event notifications (not handshakes) to fail, per path, before answering 200 again. */
  const failures: Record<string, number> = { '/flaky': 2 };
  /** Paths answering everything with 503, for as long as they are listed. */
  const broken = new Set<string>(['/refuses']);
  let releaseGate: () => void = () => undefined;
  const gate = new Promise<void>((resolve) => {
    releaseGate = resolve;
  });
  let classicId: string;
  let encounterId: string;
  const patients = generatePatients({ count: 2, seed: 5, maxNotesPerPatient: 1 });
  const classic = () => receiver.accepted('/notify');
  const to = (path: string) => receiver.requests.filter((request) => request.path === path);

  beforeAll(async () => {
    receiver = await startNotificationReceiver(async (request) => {
      if (request.path === '/gated') await gate;
      if (broken.has(request.path)) return 503;
      if (request.type !== 'handshake' && (failures[request.path] ?? 0) > 0) {
        failures[request.path]--;
        return 503;
      }
      return 200;
    });
    running = await startSandboxServer({
      subscriptions: {
        retryDelaysMs: [20, 20, 20],
        allowedEndpoints: paths.map((path) => `${receiver.url}${path}`),
      },
    });
    base = running.baseUrl;
    await running.sandbox.seed(patients.flatMap((patient) => patient.resources));
  });
  afterAll(async () => {
    releaseGate();
    await running?.close();
    await receiver?.close();
  });

  const subscriptionTo = (endpointPath: string, extra: Record<string, unknown> = {}) => ({
    resourceType: 'Subscription',
    status: 'requested',
    reason: `test ${endpointPath}`,
    criteria: 'Encounter?',
    channel: {
      type: 'rest-hook',
      endpoint: `${receiver.url}${endpointPath}`,
      payload: 'application/fhir+json',
    },
    ...extra,
  });
  const newEncounter = (patientId: string, status = 'planned') =>
    fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status,
        class: { code: 'AMB' },
        subject: { reference: `Patient/${patientId}` },
      },
    });
  const stored = async (id: string) => (await fhirFetch(`${base}/Subscription/${id}`)).json;
  const statusOf = async (id: string) => {
    const bundle = (await fhirFetch(`${base}/Subscription/${id}/$status`)).json;
    return { entry: [bundle.entry[0]] };
  };

  it('hands shake with a requested subscription and activates it', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        ...subscriptionTo('/notify'),
        channel: {
          type: 'rest-hook',
          endpoint: `${receiver.url}/notify`,
          payload: 'application/fhir+json',
          header: ['Authorization: Bearer s3cret'],
        },
      },
    });
    expect(created.status).toBe(201);
    classicId = created.json.id;
    await running.sandbox.whenIdle();
    expect(classic()).toHaveLength(1);
    const handshake = classic()[0];
    expect(handshake.headers.authorization).toBe('Bearer s3cret');
    expect(handshake.headers['content-type']).toBe('application/fhir+json');
    expect(parameter(handshake.body, 'type').valueCode).toBe('handshake');
    expect(parameter(handshake.body, 'status').valueCode).toBe('requested');
    expect(parameter(handshake.body, 'events-since-subscription-start').valueString).toBe('0');
    expect((await stored(classicId)).status).toBe('active');
  });

  it('posts an id-only event-notification when an Encounter is created', async () => {
    const created = await newEncounter(patients[0].patientId);
    encounterId = created.json.id;
    await running.sandbox.whenIdle();
    expect(classic()).toHaveLength(2);
    const notification = classic()[1].body;
    expect(classic()[1].headers.authorization).toBe('Bearer s3cret');
    expect(notification).toMatchObject({ resourceType: 'Bundle', type: 'history' });
    expect(notification.entry[0].resource.resourceType).toBe('Parameters');
    expect(parameter(notification, 'subscription').valueReference.reference).toBe(
      `${base}/Subscription/${classicId}`,
    );
    expect(parameter(notification, 'topic').valueCanonical).toBeTruthy();
    expect(parameter(notification, 'status').valueCode).toBe('active');
    expect(parameter(notification, 'type').valueCode).toBe('event-notification');
    expect(parameter(notification, 'events-since-subscription-start').valueString).toBe('1');
    expect(part(notification, 'event-number').valueString).toBe('1');
    expect(Date.parse(part(notification, 'timestamp').valueInstant)).not.toBeNaN();
    expect(part(notification, 'focus').valueReference.reference).toBe(`${base}/Encounter/${encounterId}`);
    expect(notification.entry[1]).toEqual({
      fullUrl: `${base}/Encounter/${encounterId}`,
      request: { method: 'POST', url: 'Encounter' },
      response: { status: '201' },
    });
  });

  it('notifies a status change, numbered per subscription, and stays quiet for other edits', async () => {
    const current = (await fhirFetch(`${base}/Encounter/${encounterId}`)).json;
    await fhirFetch(`${base}/Encounter/${encounterId}`, {
      method: 'PUT',
      body: { ...current, status: 'finished' },
    });
    await running.sandbox.whenIdle();
    expect(classic()).toHaveLength(3);
    const notification = classic()[2].body;
    expect(parameter(notification, 'events-since-subscription-start').valueString).toBe('2');
    expect(part(notification, 'event-number').valueString).toBe('2');
    expect(notification.entry[1].request).toEqual({ method: 'PUT', url: `Encounter/${encounterId}` });

    const finished = (await fhirFetch(`${base}/Encounter/${encounterId}`)).json;
    await fhirFetch(`${base}/Encounter/${encounterId}`, {
      method: 'PUT',
      body: { ...finished, reasonCode: [{ text: 'follow-up' }] },
    });
    const patient = (await fhirFetch(`${base}/Patient/${patients[0].patientId}`)).json;
    await fhirFetch(`${base}/Patient/${patients[0].patientId}`, {
      method: 'PUT',
      body: { ...patient, active: false },
    });
    await running.sandbox.whenIdle();
    expect(classic()).toHaveLength(3);
  });

  it('sends heartbeats on demand with the running event count', async () => {
    await running.sandbox.heartbeat(classicId);
    await running.sandbox.whenIdle();
    const heartbeat = classic().at(-1)!.body;
    expect(parameter(heartbeat, 'type').valueCode).toBe('heartbeat');
    expect(parameter(heartbeat, 'events-since-subscription-start').valueString).toBe('2');
    expect(parameter(heartbeat, 'notification-event')).toBeUndefined();
  });

  it('answers $status and $events from what it sent', async () => {
    const status = await fhirFetch(`${base}/Subscription/${classicId}/$status`);
    expect(status.status).toBe(200);
    expect(status.json.type).toBe('searchset');
    const parameters = { entry: [status.json.entry[0]] };
    expect(parameter(parameters, 'type').valueCode).toBe('query-status');
    expect(parameter(parameters, 'status').valueCode).toBe('active');
    expect(parameter(parameters, 'events-since-subscription-start').valueString).toBe('2');
    expect(parameter(parameters, 'error')).toBeUndefined();

    const events = await fhirFetch(
      `${base}/Subscription/${classicId}/$events?eventsSinceNumber=2&eventsUntilNumber=2`,
    );
    expect(events.json.type).toBe('history');
    expect(parameter(events.json, 'type').valueCode).toBe('query-event');
    const eventParts = events.json.entry[0].resource.parameter.filter(
      (item: any) => item.name === 'notification-event',
    );
    expect(eventParts).toHaveLength(1);
    expect(part(events.json, 'event-number').valueString).toBe('2');
    expect(part(events.json, 'focus').valueReference.reference).toBe(`${base}/Encounter/${encounterId}`);
    // The same timestamp as the delivered notification: events are remembered, not re-made.
    expect(part(events.json, 'timestamp').valueInstant).toBe(
      part(classic()[2].body, 'timestamp').valueInstant,
    );

    const all = await fhirFetch(`${base}/Subscription/$status`);
    expect(all.json.total).toBeGreaterThanOrEqual(1);
    const missing = await fhirFetch(`${base}/Subscription/nope/$status`);
    expect(missing.status).toBe(404);
  });

  it('keeps a subscription requested, and notifies it of nothing, until its handshake is answered', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscriptionTo('/gated'),
    });
    expect(created.status).toBe(201);
    expect(created.json.status).toBe('requested');
    const id = created.json.id;
    // The endpoint holds the handshake open: an encounter event now must not reach it, then or later.
    await new Promise((resolve) => setTimeout(resolve, 50));
    expect((await stored(id)).status).toBe('requested');
    const status = await statusOf(id);
    expect(parameter(status, 'status').valueCode).toBe('requested');
    await newEncounter(patients[1].patientId, 'arrived');
    await running.sandbox.heartbeat(id);
    releaseGate();
    await running.sandbox.whenIdle();
    expect(to('/gated').map((request) => request.type)).toEqual(['handshake']);
    expect((await stored(id)).status).toBe('active');
    expect(parameter(await statusOf(id), 'events-since-subscription-start').valueString).toBe('0');

    // Active now: the next event is number 1.
    await newEncounter(patients[1].patientId, 'arrived');
    await running.sandbox.whenIdle();
    expect(to('/gated').map((request) => request.type)).toEqual(['handshake', 'event-notification']);
    expect(part(to('/gated')[1].body, 'event-number').valueString).toBe('1');
  });

  it('never lets a client declare a subscription active: an unanswered handshake ends in error', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscriptionTo('/refuses', { status: 'active' }),
    });
    expect(created.status).toBe(201);
    expect(created.json.status).toBe('requested');
    await running.sandbox.whenIdle();
    // The handshake, retried three times.
    expect(to('/refuses').map((request) => request.type)).toEqual(Array(4).fill('handshake'));
    const subscription = await stored(created.json.id);
    expect(subscription.status).toBe('error');
    expect(subscription.error).toMatch(/handshake.*4 attempts.*HTTP 503/);
    await newEncounter(patients[0].patientId);
    await running.sandbox.whenIdle();
    expect(to('/refuses')).toHaveLength(4);
    // Nor can a client set error itself, or a status R4 does not know.
    for (const status of ['error', 'entered-in-error']) {
      const refused = await fhirFetch(`${base}/Subscription`, {
        method: 'POST',
        body: subscriptionTo('/notify', { status }),
      });
      expect(refused.status).toBe(422);
      expect(refused.json.issue[0].expression).toEqual(['Subscription.status']);
    }
  });

  it('retries a failing notification, then puts the subscription in error, shown by $status', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscriptionTo('/breaks'),
    });
    const id = created.json.id;
    await running.sandbox.whenIdle();
    expect((await stored(id)).status).toBe('active');
    broken.add('/breaks');
    await newEncounter(patients[0].patientId);
    await running.sandbox.whenIdle();
    const attempts = to('/breaks').filter((request) => request.type === 'event-notification');
    expect(attempts).toHaveLength(4);
    expect(attempts.every((request: ReceivedRequest) => request.answeredWith === 503)).toBe(true);
    const subscription = await stored(id);
    expect(subscription.status).toBe('error');
    expect(subscription.error).toMatch(
      /event-notification could not be delivered: 4 attempts, last: HTTP 503/,
    );
    const status = await statusOf(id);
    expect(parameter(status, 'status').valueCode).toBe('error');
    expect(parameter(status, 'error').valueCodeableConcept.text).toBe(subscription.error);
    expect(running.sandbox.deliveries.findLast((delivery) => delivery.subscriptionId === id)).toMatchObject({
      status: 'failed',
      attempts: 4,
      httpStatus: 503,
    });

    // In error nothing is sent, but events still count, so a restart reveals what was missed.
    await newEncounter(patients[0].patientId);
    await running.sandbox.whenIdle();
    expect(to('/breaks').filter((request) => request.type === 'event-notification')).toHaveLength(4);
    expect(parameter(await statusOf(id), 'events-since-subscription-start').valueString).toBe('2');

    // Asked for again (as the service's watchdog does, writing back what it read): a new handshake.
    broken.delete('/breaks');
    const restarted = await fhirFetch(`${base}/Subscription/${id}`, {
      method: 'PUT',
      body: { ...(await stored(id)), status: 'requested' },
    });
    expect(restarted.status).toBe(200);
    expect(restarted.json.error).toBeUndefined();
    await running.sandbox.whenIdle();
    const handshake = to('/breaks').at(-1)!;
    expect(handshake.type).toBe('handshake');
    expect(parameter(handshake.body, 'events-since-subscription-start').valueString).toBe('2');
    expect(await stored(id)).toMatchObject({ status: 'active' });
    expect((await stored(id)).error).toBeUndefined();
  });

  it('keeps channel headers across a write that leaves them out, but never sends them to a new endpoint', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        ...subscriptionTo('/once'),
        channel: {
          type: 'rest-hook',
          endpoint: `${receiver.url}/once`,
          header: ['Authorization: Bearer kept-secret', 'Content-Length: 1', 'Host: elsewhere.example'],
        },
      },
    });
    await running.sandbox.whenIdle();
    const [first] = to('/once');
    expect(first.headers.authorization).toBe('Bearer kept-secret');
    // Headers that frame or address the request stay the sandbox's own.
    expect(first.headers.host).toBe(new URL(receiver.url).host);
    expect(Number(first.headers['content-length'])).toBe(Buffer.byteLength(first.text));
    const id = created.json.id;

    // Read (no headers shown) and written back asking for a restart: the secret is still sent.
    await fhirFetch(`${base}/Subscription/${id}`, {
      method: 'PUT',
      body: { ...(await stored(id)), status: 'requested' },
    });
    await running.sandbox.whenIdle();
    expect(to('/once')).toHaveLength(2);
    expect(to('/once')[1].headers.authorization).toBe('Bearer kept-secret');

    // Moved to another endpoint without headers: the new endpoint gets none, and must shake hands first.
    const current = await stored(id);
    const moved = await fhirFetch(`${base}/Subscription/${id}`, {
      method: 'PUT',
      body: { ...current, channel: { ...current.channel, endpoint: `${receiver.url}/moved` } },
    });
    expect(moved.json.status).toBe('requested');
    await running.sandbox.whenIdle();
    expect(to('/moved').map((request) => request.type)).toEqual(['handshake']);
    expect(to('/moved')[0].headers.authorization).toBeUndefined();

    const malformed = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        ...subscriptionTo('/once'),
        channel: { type: 'rest-hook', endpoint: `${receiver.url}/once`, header: ['no colon here'] },
      },
    });
    expect(malformed.status).toBe(422);
    expect(malformed.json.issue[0].expression).toEqual(['Subscription.channel.header']);
  });

  it('sends heartbeats by itself at the backport-heartbeat-period', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscriptionTo('/heartbeat', {
        criteria: 'Encounter?status=cancelled',
        channel: {
          type: 'rest-hook',
          endpoint: `${receiver.url}/heartbeat`,
          payload: 'application/fhir+json',
          extension: [{ url: heartbeatPeriodUrl, valueUnsignedInt: 1 }],
        },
      }),
    });
    const heartbeats = () => to('/heartbeat').filter((request) => request.type === 'heartbeat');
    for (let waited = 0; heartbeats().length === 0 && waited < 100; waited++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(to('/heartbeat')[0].type).toBe('handshake');
    expect(heartbeats().length).toBeGreaterThan(0);
    expect(parameter(heartbeats()[0].body, 'subscription').valueReference.reference).toBe(
      `${base}/Subscription/${created.json.id}`,
    );
    // Switched off: no more heartbeats are scheduled.
    await fhirFetch(`${base}/Subscription/${created.json.id}`, {
      method: 'PUT',
      body: { ...(await stored(created.json.id)), status: 'off' },
    });
  });

  it('retries a failing endpoint and then delivers', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscriptionTo('/flaky', { criteria: `Encounter?patient=${patients[1].patientId}` }),
    });
    await running.sandbox.whenIdle();
    await newEncounter(patients[1].patientId, 'arrived');
    await running.sandbox.whenIdle();
    const flaky = receiver.accepted('/flaky').filter((request) => request.type === 'event-notification');
    expect(flaky).toHaveLength(1);
    expect(part(flaky[0].body, 'event-number').valueString).toBe('1');
    const record = running.sandbox.deliveries.findLast(
      (delivery) => delivery.subscriptionId === created.json.id,
    )!;
    expect(record).toMatchObject({ status: 'delivered', attempts: 3, eventNumber: 1 });
    expect((await stored(created.json.id)).status).toBe('active');
  });

  it.skipIf(!sharedFixtures)(
    'accepts the Backport topic-based Subscription shape with a filter',
    async () => {
      const fixture = JSON.parse(
        readFileSync(
          path.join(sharedFixtures as string, 'subscriptions/inferno-Subscription_id-only.json'),
          'utf8',
        ),
      );
      const patientId = patients[1].patientId;
      fixture.end = undefined;
      fixture.channel.endpoint = `${receiver.url}/topic`;
      fixture._criteria.extension[0].valueString = `Encounter.patient=Patient/${patientId}`;
      const created = await fhirFetch(`${base}/Subscription`, { method: 'POST', body: fixture });
      await running.sandbox.whenIdle();
      expect((await stored(created.json.id)).status).toBe('active');
      const topic = () => receiver.accepted('/topic');
      expect(topic()).toHaveLength(1);
      expect(topic()[0].headers.authorization).toBe('Bearer SAMPLE_TOKEN');

      await newEncounter(patients[0].patientId, 'in-progress');
      const matching = await newEncounter(patientId, 'in-progress');
      await running.sandbox.whenIdle();
      expect(topic()).toHaveLength(2);
      const notification = topic()[1].body;
      expect(parameter(notification, 'topic').valueCanonical).toBe(fixture.criteria);
      expect(part(notification, 'event-number').valueString).toBe('1');
      expect(part(notification, 'focus').valueReference.reference).toBe(
        `${base}/Encounter/${matching.json.id}`,
      );
    },
  );

  it.skipIf(!sharedFixtures)('refuses a subscription to an endpoint outside the allowed ones', async () => {
    const fixture = JSON.parse(
      readFileSync(
        path.join(sharedFixtures as string, 'subscriptions/inferno-Subscription_id-only.json'),
        'utf8',
      ),
    );
    const before = running.sandbox.deliveries.length;
    const refused = await fhirFetch(`${base}/Subscription`, { method: 'POST', body: fixture });
    expect(refused.status).toBe(422);
    expect(refused.json).toMatchObject({
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'business-rule', expression: ['Subscription.channel.endpoint'] }],
    });
    expect(refused.json.issue[0].diagnostics).toMatch(/not an allowed notification endpoint/);
    const listed = await fhirFetch(`${base}/Subscription?_count=1000`);
    expect(listed.text).not.toContain(
      'inferno.healthit.gov/suites/custom/subscriptions_r5_backport_r4_server',
    );
    await newEncounter(patients[0].patientId);
    await running.sandbox.whenIdle();
    const toInferno = running.sandbox.deliveries
      .slice(before)
      .filter((delivery) => delivery.endpoint.includes('inferno'));
    expect(toInferno).toHaveLength(0);
  });
});
