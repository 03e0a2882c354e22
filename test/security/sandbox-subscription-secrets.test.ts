// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP responses.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.ts';
import { startSandboxService } from '../integration/service-harness.ts';
import { type NotificationReceiver, startNotificationReceiver } from '../sandbox/notification-receiver.ts';
import { fhirFetch, type RunningSandbox, startSandboxServer } from '../sandbox/sandbox-server.ts';

/**
 * The sandbox EHR held its subscribers' secrets where anyone could read them (`GET
 * /sandbox/fhir/Subscription` showed the service's notify secret in channel.header), and it would POST,
 * with headers of the caller's choosing, to any loopback URL. Channel headers are write-only now, and
 * notifications go only to endpoints allowed exactly.
 */
const backport = 'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition';
const secret = 'bearer-secret-7f3a9c1e5b2d4f6a';
const apiKey = 'api-key-0b1c2d3e4f5a6b7c8d9e';

describe('sandbox Subscription channel headers are write-only', () => {
  let receiver: NotificationReceiver;
  let running: RunningSandbox;
  let base: string;

  beforeAll(async () => {
    receiver = await startNotificationReceiver();
    running = await startSandboxServer({
      subscriptions: { allowedEndpoints: [`${receiver.url}/notify`], retryDelaysMs: [20] },
    });
    base = running.baseUrl;
  });
  afterAll(async () => {
    await running?.close();
    await receiver?.close();
  });

  it('never returns them on read, vread, history, search, _include, batch, $status or $events, nor in a payload', async () => {
    const endpoint = `${receiver.url}/notify`;
    const created = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        resourceType: 'Subscription',
        status: 'requested',
        reason: 'secrets',
        criteria: 'Encounter?',
        channel: {
          type: 'rest-hook',
          endpoint,
          payload: 'application/fhir+json',
          _payload: {
            extension: [{ url: `${backport}/backport-payload-content`, valueCode: 'full-resource' }],
          },
          header: [`Authorization: Bearer ${secret}`, `X-Api-Key: ${apiKey}`],
        },
      },
    });
    expect(created.status).toBe(201);
    const id = created.json.id;
    await running.sandbox.whenIdle();
    await fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status: 'finished',
        class: { code: 'AMB' },
        subject: { reference: 'Patient/p1' },
      },
    });
    await running.sandbox.whenIdle();
    // Kept for delivery: the endpoint got them with the handshake and the event.
    expect(receiver.accepted('/notify').map((request) => request.type)).toEqual([
      'handshake',
      'event-notification',
    ]);
    for (const request of receiver.accepted('/notify')) {
      expect(request.headers.authorization).toBe(`Bearer ${secret}`);
      expect(request.headers['x-api-key']).toBe(apiKey);
    }

    const current = (await fhirFetch(`${base}/Subscription/${id}`)).json;
    const updated = await fhirFetch(`${base}/Subscription/${id}`, {
      method: 'PUT',
      body: { ...current, reason: 'secrets, edited' },
    });
    expect(updated.status).toBe(200);
    const versionId = created.json.meta.versionId;
    // Something that points at the subscription, so that searches can pull it in with _include.
    const provenance = await fhirFetch(`${base}/Provenance`, {
      method: 'POST',
      body: {
        resourceType: 'Provenance',
        target: [{ reference: `Subscription/${id}` }],
        recorded: new Date().toISOString(),
        agent: [{ who: { display: 'test' } }],
      },
    });
    expect(provenance.status).toBe(201);
    const reads: Record<string, { status: number; text: string }> = {
      create: created,
      update: updated,
      read: await fhirFetch(`${base}/Subscription/${id}`),
      vread: await fhirFetch(`${base}/Subscription/${id}/_history/${versionId}`),
      history: await fhirFetch(`${base}/Subscription/${id}/_history`),
      search: await fhirFetch(`${base}/Subscription`),
      searchByEndpoint: await fhirFetch(`${base}/Subscription?url=${encodeURIComponent(endpoint)}`),
      elements: await fhirFetch(`${base}/Subscription?_elements=channel`),
      include: await fhirFetch(`${base}/Provenance?_id=${provenance.json.id}&_include=Provenance:target`),
      revinclude: await fhirFetch(`${base}/Subscription?_id=${id}&_revinclude=Provenance:target`),
      systemSearch: await fhirFetch(`${base}?_type=Subscription`),
      batch: await fhirFetch(base, {
        method: 'POST',
        body: {
          resourceType: 'Bundle',
          type: 'batch',
          entry: [
            { request: { method: 'GET', url: `Subscription/${id}` } },
            { request: { method: 'GET', url: `Subscription?_id=${id}` } },
            { request: { method: 'GET', url: `Subscription/${id}/_history` } },
          ],
        },
      }),
      status: await fhirFetch(`${base}/Subscription/${id}/$status`),
      allStatuses: await fhirFetch(`${base}/Subscription/$status`),
      events: await fhirFetch(`${base}/Subscription/${id}/$events`),
    };
    for (const [name, response] of Object.entries(reads)) {
      expect(response.status, name).toBeLessThan(300);
      expect(response.text, name).not.toContain(secret);
      expect(response.text, name).not.toContain(apiKey);
    }
    // Each way of reading did return the subscription, only without its headers.
    expect(JSON.parse(reads.read.text).channel).toMatchObject({ endpoint, type: 'rest-hook' });
    expect(JSON.parse(reads.read.text).channel.header).toBeUndefined();
    expect(JSON.parse(reads.history.text).entry).toHaveLength(3);
    expect(JSON.parse(reads.search.text).entry[0].resource.id).toBe(id);
    expect(JSON.parse(reads.batch.text).entry[0].resource.id).toBe(id);
    for (const name of ['include', 'revinclude'])
      expect(
        JSON.parse(reads[name].text)
          .entry.map((entry: any) => entry.resource.resourceType)
          .sort(),
        name,
      ).toEqual(['Provenance', 'Subscription']);
    // Nor does the repository behind every read path (GraphQL included) hold them.
    const stored = await running.sandbox.repository.readHistory('Subscription', id);
    expect(JSON.stringify(stored)).not.toContain(secret);
    // The full-resource notification carries the Encounter, never the Subscription or its headers.
    for (const request of receiver.requests) {
      expect(request.text).not.toContain(secret);
      expect(request.text).not.toContain(apiKey);
    }
  });
});

describe('the sandbox cannot be aimed at other hosts', () => {
  let victim: NotificationReceiver;
  let running: RunningSandbox;
  let base: string;
  const attackerHeaders = ['Authorization: Bearer attacker-chosen', 'X-Admin: yes'];
  const subscription = (endpoint: string) => ({
    resourceType: 'Subscription',
    status: 'requested',
    reason: 'ssrf',
    criteria: 'Encounter?',
    channel: { type: 'rest-hook', endpoint, payload: 'application/fhir+json', header: attackerHeaders },
  });
  const encounter = {
    resourceType: 'Encounter',
    status: 'finished',
    class: { code: 'AMB' },
    subject: { reference: 'Patient/p1' },
  };

  beforeAll(async () => {
    // A loopback service the sandbox may call at exactly one URL, and must call nowhere else.
    victim = await startNotificationReceiver();
    running = await startSandboxServer({
      subscriptions: { allowedEndpoints: [`${victim.url}/notify`], retryDelaysMs: [] },
    });
    base = running.baseUrl;
  });
  afterAll(async () => {
    await running?.close();
    await victim?.close();
  });

  it('refuses a loopback endpoint that is not allowed, by default and with attacker headers, and never calls it', async () => {
    const bare = await startSandboxServer();
    try {
      const refused = await fhirFetch(`${bare.baseUrl}/Subscription`, {
        method: 'POST',
        body: subscription(`${victim.url}/notify`),
      });
      expect(refused.status).toBe(422);
      expect(refused.json.issue[0]).toMatchObject({
        code: 'business-rule',
        expression: ['Subscription.channel.endpoint'],
      });
      await fhirFetch(`${bare.baseUrl}/Encounter`, { method: 'POST', body: encounter });
      await bare.sandbox.whenIdle();
    } finally {
      await bare.close();
    }
    const admin = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: subscription(`${victim.url}/admin`),
    });
    expect(admin.status).toBe(422);
    await fhirFetch(`${base}/Encounter`, { method: 'POST', body: encounter });
    await running.sandbox.whenIdle();
    expect(victim.requests).toHaveLength(0);
  });

  it('refuses prefix, path, user-info and host tricks on the allowed endpoint, on create and on update', async () => {
    const host = new URL(victim.url).host;
    const tricks = [
      `${victim.url}/notify.evil`,
      `${victim.url}/notify/`,
      `${victim.url}/notify/admin`,
      `${victim.url}/notify/../admin`,
      `${victim.url}/notify/..%2Fadmin`,
      `${victim.url}/notify?next=/admin`,
      `http://user@${host}/notify`,
      `http://user:password@${host}/notify`,
      `http://${host}@127.0.0.1:1/notify`,
      `http://localhost:${new URL(victim.url).port}/notify`,
    ];
    for (const endpoint of tricks) {
      const refused = await fhirFetch(`${base}/Subscription`, {
        method: 'POST',
        body: subscription(endpoint),
      });
      expect(refused.status, endpoint).toBe(422);
    }

    // An allowed subscription cannot be moved onto a trick either, and keeps its endpoint.
    const allowed = await fhirFetch(`${base}/Subscription`, {
      method: 'POST',
      body: {
        ...subscription(`${victim.url}/notify`),
        channel: { type: 'rest-hook', endpoint: `${victim.url}/notify` },
      },
    });
    expect(allowed.status).toBe(201);
    await running.sandbox.whenIdle();
    for (const endpoint of tricks) {
      const current = (await fhirFetch(`${base}/Subscription/${allowed.json.id}`)).json;
      const moved = await fhirFetch(`${base}/Subscription/${allowed.json.id}`, {
        method: 'PUT',
        body: { ...current, channel: { ...current.channel, endpoint, header: attackerHeaders } },
      });
      expect(moved.status, endpoint).toBe(422);
    }
    await fhirFetch(`${base}/Encounter`, { method: 'POST', body: encounter });
    await running.sandbox.whenIdle();
    expect(victim.requests.length).toBeGreaterThan(0);
    // Only the allowed URL was called, and never with the attacker's headers.
    for (const request of victim.requests) {
      expect(request.path).toBe('/notify');
      expect(request.headers.authorization).toBeUndefined();
      expect(request.headers['x-admin']).toBeUndefined();
    }
  });
});

describe("the running sandbox does not give away the service's notify secret", () => {
  let service: RunningService;
  beforeAll(async () => {
    ({ service } = await startSandboxService());
  });
  afterAll(async () => {
    await service?.close();
  });

  it('shows the service its own subscription, active after the handshake, without channel.header', async () => {
    const list = () => fhirFetch(`${service.fhirBaseUrl}/Subscription`);
    let listed = await list();
    for (let waited = 0; listed.json.entry?.[0]?.resource.status !== 'active' && waited < 150; waited++) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      listed = await list();
    }
    const [entry] = listed.json.entry;
    expect(entry.resource).toMatchObject({
      status: 'active',
      channel: { endpoint: `${service.url}/notify` },
    });
    expect(entry.resource.channel.header).toBeUndefined();
    expect(listed.text).not.toContain(service.notifySecret);
    const history = await fhirFetch(`${service.fhirBaseUrl}/Subscription/${entry.resource.id}/_history`);
    expect(history.json.entry.length).toBeGreaterThan(1);
    expect(history.text).not.toContain(service.notifySecret);
  });
});
