// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP requests.
import { readFileSync } from 'node:fs';
import { createServer, type IncomingHttpHeaders, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import { fhirFetch, type RunningSandbox, startSandboxServer } from './sandbox-server.ts';

interface Received {
  path: string;
  headers: IncomingHttpHeaders;
  body: any;
}

/** A local notification endpoint that records what it gets and can fail the first attempts on a path. */
async function startReceiver(failuresByPath: Record<string, number>) {
  const received: Received[] = [];
  const server: Server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', () => {
      const requestPath = request.url ?? '';
      if ((failuresByPath[requestPath] ?? 0) > 0) {
        failuresByPath[requestPath]--;
        response.writeHead(503).end();
        return;
      }
      received.push({
        path: requestPath,
        headers: request.headers,
        body: JSON.parse(Buffer.concat(chunks).toString()),
      });
      response.writeHead(200).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    received,
    url: `http://127.0.0.1:${port}`,
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}

function parameter(notification: any, name: string): any {
  return notification.entry[0].resource.parameter.find((candidate: any) => candidate.name === name);
}

function part(notification: any, name: string): any {
  return parameter(notification, 'notification-event')?.part.find(
    (candidate: any) => candidate.name === name,
  );
}

describe('sandbox subscriptions (Backport IG, R4)', () => {
  let running: RunningSandbox;
  let base: string;
  let receiver: Awaited<ReturnType<typeof startReceiver>>;
  const failures: Record<string, number> = { '/flaky': 2 };
  let classicId: string;
  let encounterId: string;
  const patients = generatePatients({ count: 2, seed: 5, maxNotesPerPatient: 1 });
  const classic = () => receiver.received.filter((item) => item.path === '/notify');

  beforeAll(async () => {
    receiver = await startReceiver(failures);
    running = await startSandboxServer({ subscriptions: { retryDelaysMs: [20, 20, 20] } });
    base = running.baseUrl;
    await running.sandbox.seed(patients.flatMap((patient) => patient.resources));
  });
  afterAll(async () => {
    await running?.close();
    await receiver?.close();
  });

  it('hands shake with a requested subscription and activates it', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        resourceType: 'Subscription',
        status: 'requested',
        reason: 'drafts',
        criteria: 'Encounter?',
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
    expect(parameter(handshake.body, 'events-since-subscription-start').valueString).toBe('0');
    const subscription = await fhirFetch(`${base}/Subscription/${classicId}`);
    expect(subscription.json.status).toBe('active');
  });

  it('posts an id-only event-notification when an Encounter is created', async () => {
    const created = await fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status: 'planned',
        class: { code: 'AMB' },
        subject: { reference: `Patient/${patients[0].patientId}` },
      },
    });
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

  it('sends heartbeats by itself at the backport-heartbeat-period', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        resourceType: 'Subscription',
        status: 'active',
        reason: 'heartbeat check',
        criteria: 'Encounter?status=cancelled',
        channel: {
          type: 'rest-hook',
          endpoint: `${receiver.url}/heartbeat`,
          payload: 'application/fhir+json',
          extension: [
            {
              url: 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-heartbeat-period',
              valueUnsignedInt: 1,
            },
          ],
        },
      },
    });
    const heartbeats = () => receiver.received.filter((item) => item.path === '/heartbeat');
    for (let waited = 0; heartbeats().length === 0 && waited < 100; waited++) {
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    expect(heartbeats().length).toBeGreaterThan(0);
    expect(parameter(heartbeats()[0].body, 'type').valueCode).toBe('heartbeat');
    expect(parameter(heartbeats()[0].body, 'subscription').valueReference.reference).toBe(
      `${base}/Subscription/${created.json.id}`,
    );
    // Switched off: no more heartbeats are scheduled.
    await fhirFetch(`${base}/Subscription/${created.json.id}`, {
      method: 'PUT',
      body: { ...created.json, status: 'off' },
    });
  });

  it('retries a failing endpoint and then delivers', async () => {
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        resourceType: 'Subscription',
        status: 'active',
        reason: 'flaky receiver',
        criteria: `Encounter?patient=${patients[1].patientId}`,
        channel: { type: 'rest-hook', endpoint: `${receiver.url}/flaky`, payload: 'application/fhir+json' },
      },
    });
    await fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status: 'arrived',
        class: { code: 'AMB' },
        subject: { reference: `Patient/${patients[1].patientId}` },
      },
    });
    await running.sandbox.whenIdle();
    const flaky = receiver.received.filter((item) => item.path === '/flaky');
    expect(flaky).toHaveLength(1);
    expect(part(flaky[0].body, 'event-number').valueString).toBe('1');
    const record = running.sandbox.deliveries.findLast(
      (delivery) => delivery.subscriptionId === created.json.id,
    )!;
    expect(record).toMatchObject({ status: 'delivered', attempts: 3, eventNumber: 1 });
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
      expect((await fhirFetch(`${base}/Subscription/${created.json.id}`)).json.status).toBe('active');
      const topic = () => receiver.received.filter((item) => item.path === '/topic');
      expect(topic()).toHaveLength(1);
      expect(topic()[0].headers.authorization).toBe('Bearer SAMPLE_TOKEN');

      const encounter = (subject: string) => ({
        resourceType: 'Encounter',
        status: 'in-progress',
        class: { code: 'AMB' },
        subject: { reference: `Patient/${subject}` },
      });
      await fhirFetch(`${base}/Encounter`, { method: 'POST', body: encounter(patients[0].patientId) });
      const matching = await fhirFetch(`${base}/Encounter`, { method: 'POST', body: encounter(patientId) });
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

  it.skipIf(!sharedFixtures)('never posts to endpoints outside the allowed ones', async () => {
    const fixture = JSON.parse(
      readFileSync(
        path.join(sharedFixtures as string, 'subscriptions/inferno-Subscription_id-only.json'),
        'utf8',
      ),
    );
    const before = running.sandbox.deliveries.length;
    const created = await fhirFetch(`${base}/Subscription`, { method: 'POST', body: fixture });
    await running.sandbox.whenIdle();
    const stored = (await fhirFetch(`${base}/Subscription/${created.json.id}`)).json;
    expect(stored.status).toBe('error');
    expect(stored.error).toMatch(/not allowed/);
    await fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status: 'planned',
        class: { code: 'AMB' },
        subject: { reference: 'Patient/123' },
      },
    });
    await running.sandbox.whenIdle();
    const toInferno = running.sandbox.deliveries
      .slice(before)
      .filter((delivery) => delivery.endpoint.includes('inferno'));
    expect(toInferno).toHaveLength(0);
  });
});
