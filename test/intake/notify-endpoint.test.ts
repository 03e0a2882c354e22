import { readFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { medplumSignature } from '../../src/intake/medplum-signature.ts';
import { seedEncounters } from '../support/fhir-stand-in.ts';
import {
  draftsByEncounter,
  type IntakeHarness,
  startIntakeHarness,
  waitFor,
} from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';

/**
 * POST /notify and its siblings against the running service (real HTTP) and a FHIR stand-in on
 * another port: every push source, authentication before anything is read or fetched, bad input.
 */
let harness: IntakeHarness | undefined;
afterEach(async () => {
  await harness?.close();
  harness = undefined;
});

const fixture = (name: string) =>
  JSON.parse(readFileSync(path.join(sharedFixtures as string, 'subscriptions', name), 'utf8'));

async function internalEvents(current: IntakeHarness, source: string) {
  const outcomes = ['queued', 'collapsed', 'reconcile'];
  let total = 0;
  for (const outcome of outcomes)
    total += await current.metric('ehr_agent_intake_events_total', { source, outcome });
  return total;
}

describe.skipIf(!sharedFixtures)('Backport IG examples', () => {
  for (const name of ['ig-r4-notification-id-only.json', 'ig-r4-notification-full_resource.json']) {
    it(`${name} yields exactly one queued encounter event`, async () => {
      harness = await startIntakeHarness();
      const response = await harness.post('/notify', fixture(name));
      expect(response.status).toBe(200);
      expect((await response.json()).resourceType).toBe('OperationOutcome');
      expect(await internalEvents(harness, 'backport')).toBe(1);
      const jobs = [
        ...(await harness.service.queue.list('pending')),
        ...(await harness.service.queue.list('running')),
        ...(await harness.service.queue.list('done')),
      ];
      expect(jobs.map((job) => job.encounterId)).toEqual(['86009987-eabe-42bf-8c02-b112b18cb616']);
      // The encounter is not on this server: the job ends cleanly, not in the dead-letter list.
      await waitFor(async () => (await harness?.service.queue.list('done'))?.length === 1, 'job done');
      expect((await harness.service.queue.list('done'))[0].outcome).toBe('encounter-gone');
    });
  }

  it('the empty-payload example yields exactly one reconcile, which polls the server', async () => {
    harness = await startIntakeHarness();
    const response = await harness.post('/notify', fixture('ig-r4-notification-empty.json'));
    expect(response.status).toBe(200);
    expect(await internalEvents(harness, 'backport')).toBe(1);
    expect(
      await harness.metric('ehr_agent_intake_events_total', { source: 'backport', outcome: 'reconcile' }),
    ).toBe(1);
    await waitFor(
      () => harness?.standIn.requests.some((request) => request.startsWith('GET /Encounter?_lastUpdated=gt')),
      'a poll',
    );
  });

  it('handshake and heartbeat yield no event; a heartbeat repeating a seen event is deduplicated', async () => {
    const subscription = 'https://example.org/fhir/Subscription/admission';
    harness = await startIntakeHarness({ intake: { trackedSubscriptions: [subscription] } });
    const handshake = notificationBundle({
      subscription,
      type: 'handshake',
      status: 'requested',
      counter: 0,
    });
    const heartbeat = notificationBundle({ subscription, type: 'heartbeat', counter: 0 });
    expect((await harness.post('/notify', handshake)).status).toBe(200);
    expect((await harness.post('/notify', heartbeat)).status).toBe(200);
    expect(await internalEvents(harness, 'backport')).toBe(0);
    expect(await harness.service.queue.counts()).toEqual({ pending: 0, running: 0, done: 0, failed: 0 });
    // A heartbeat carrying an event already delivered adds nothing.
    const event = { number: 1, focus: 'Encounter/e-1', timestamp: '2026-11-27T10:00:00Z' };
    await harness.post('/notify', notificationBundle({ subscription, counter: 1, events: [event] }));
    await harness.post(
      '/notify',
      notificationBundle({ subscription, type: 'event-notification', counter: 1, events: [event] }),
    );
    expect(
      await harness.metric('ehr_agent_intake_events_total', { source: 'backport', outcome: 'duplicate' }),
    ).toBe(1);
    expect(await internalEvents(harness, 'backport')).toBe(1);
  });
});

describe('notification sequences end with one draft per encounter version', () => {
  it('duplicates, out-of-order, a gap recovered by $events, and a counter reset', async () => {
    // Configured as a relative reference: it names the subscription on the service's own FHIR server.
    harness = await startIntakeHarness({ intake: { trackedSubscriptions: ['Subscription/sub-sequence'] } });
    const ids = seedEncounters(harness.standIn, 8);
    const subscriptionId = 'sub-sequence';
    const subscription = `${harness.standIn.url}/Subscription/${subscriptionId}`;
    // The server's own log, which $events answers from.
    for (const id of ids.slice(0, 6)) harness.standIn.recordEvent(subscriptionId, `Encounter/${id}`);
    const event = (index: number) => ({
      number: index + 1,
      focus: `Encounter/${ids[index]}`,
      timestamp: harness?.standIn.subscriptions.get(subscriptionId)?.events[index]?.timestamp,
    });
    const send = (counter: number, events: ReturnType<typeof event>[]) =>
      harness?.post('/notify', notificationBundle({ subscription, counter, events }));

    await harness.post('/notify', notificationBundle({ subscription, type: 'handshake', counter: 0 }));
    await send(1, [event(0)]);
    await send(2, [event(1)]);
    await send(2, [event(1)]); // redelivered
    await send(4, [event(3)]); // 3 is late
    await send(3, [event(2)]); // ...and arrives out of order
    await send(6, [event(5)]); // 5 never arrives: $events recovers it after the grace period
    expect(
      await harness.metric('ehr_agent_intake_events_total', { source: 'backport', outcome: 'duplicate' }),
    ).toBe(1);

    await waitFor(
      () => draftsByEncounter((harness as IntakeHarness).standIn).size === 6,
      'six drafts',
      20_000,
    );
    // Number 3 came late and filled its gap; only 5 outlived the grace period.
    expect(
      await harness.metric('ehr_agent_subscription_gaps_detected_total', { subscription_kind: 'backport' }),
    ).toBe(1);
    expect(
      harness.standIn.requests.some((request) =>
        request.includes('/$events?eventsSinceNumber=5&eventsUntilNumber=5'),
      ),
    ).toBe(true);

    // The server starts over: event number 1 again, for another encounter.
    harness.standIn.subscriptions.get(subscriptionId)?.events.splice(0);
    harness.standIn.recordEvent(subscriptionId, `Encounter/${ids[6]}`);
    await send(1, [{ number: 1, focus: `Encounter/${ids[6]}`, timestamp: '2026-11-28T00:00:00Z' }]);
    expect(await harness.metric('ehr_agent_subscription_resets_detected_total', {})).toBe(1);
    // A reset reconciles by polling, which also finds the one encounter never notified at all.
    await waitFor(
      () => harness?.standIn.requests.some((request) => request.startsWith('GET /Encounter?_lastUpdated')),
      'reconcile',
    );
    await waitFor(
      () => draftsByEncounter((harness as IntakeHarness).standIn).size === 8,
      'drafts after reset',
    );
    // Re-sending everything changes nothing: one draft per encounter version.
    for (let index = 0; index < 6; index++) await send(index + 1, [event(index)]);
    await waitFor(async () => (await harness?.service.queue.counts())?.pending === 0, 'queue drained');
    await waitFor(async () => (await harness?.service.queue.counts())?.running === 0, 'queue idle');
    expect([...draftsByEncounter(harness.standIn).values()].every((count) => count === 1)).toBe(true);
    expect(harness.standIn.created.get('DocumentReference')).toBe(8);
    expect((await harness.service.queue.counts()).failed).toBe(0);
  });
});

describe('classic rest-hooks', () => {
  it('HAPI: PUT /notify/Encounter/<id> queues that encounter; an empty POST asks for a reconcile', async () => {
    harness = await startIntakeHarness();
    const [id] = seedEncounters(harness.standIn, 1);
    const encounter = harness.standIn.all('Encounter')[0];
    const put = await harness.post(`/notify/Encounter/${id}`, encounter, {}, 'PUT');
    expect(put.status).toBe(200);
    await waitFor(
      () => draftsByEncounter((harness as IntakeHarness).standIn).get(id) === 1,
      'draft from PUT',
    );
    const mismatched = await harness.post('/notify/Encounter/other-id', encounter, {}, 'PUT');
    expect(mismatched.status).toBe(422);

    const empty = await harness.post('/notify', undefined);
    expect(empty.status).toBe(200);
    expect(
      await harness.metric('ehr_agent_intake_events_total', { source: 'hapi', outcome: 'reconcile' }),
    ).toBe(1);
    await waitFor(
      () => harness?.standIn.requests.some((request) => request.startsWith('GET /Encounter?_lastUpdated')),
      'a poll',
    );
  });

  it('Medplum: a valid X-Signature queues the encounter; tampered is 401 with no FHIR call; delete `{}` is accepted', async () => {
    const secret = 'medplum-secret-0123456789';
    harness = await startIntakeHarness({ intake: { medplumSecrets: { 'medplum-sub': secret } } });
    const [id] = seedEncounters(harness.standIn, 1);
    const body = JSON.stringify(harness.standIn.all('Encounter')[0]);
    const signed = (raw: string, interaction = 'update') => ({
      authorization: '',
      'x-signature': medplumSignature(Buffer.from(raw), secret),
      'x-medplum-subscription': 'medplum-sub',
      'x-medplum-interaction': interaction,
    });
    expect((await harness.post('/notify', body, signed(body))).status).toBe(200);
    await waitFor(
      () => draftsByEncounter((harness as IntakeHarness).standIn).get(id) === 1,
      'draft from Medplum',
    );

    await waitFor(async () => (await harness?.service.queue.counts())?.done === 1, 'the job to finish');
    const requestsBefore = harness.standIn.requests.length;
    const tampered = body.replace('finished', 'cancelled');
    const refused = await harness.post('/notify', tampered, signed(body));
    expect(refused.status).toBe(401);
    expect((await refused.json()).resourceType).toBe('OperationOutcome');
    const deleted = await harness.post('/notify', '{}', signed('{}', 'delete'));
    expect(deleted.status).toBe(200);
    expect(harness.standIn.requests.length).toBe(requestsBefore);
    expect((await harness.service.queue.counts()).pending).toBe(0);
  });
});

describe('security and bad input', () => {
  it('missing or wrong auth: 401, nothing queued, no FHIR call; repeated failures are rate limited', async () => {
    harness = await startIntakeHarness({ intake: { rateLimit: { unauthenticatedPerMinute: 5 } } });
    const body = notificationBundle({
      subscription: 'Subscription/x',
      counter: 1,
      events: [{ number: 1, focus: 'Encounter/e1' }],
    });
    const statuses: number[] = [];
    statuses.push((await harness.post('/notify', body, { authorization: '' })).status);
    statuses.push(
      (await harness.post('/notify', body, { authorization: 'Bearer wrong-secret-of-some-length' })).status,
    );
    statuses.push((await harness.post('/notify/Encounter/e1', body, { authorization: '' }, 'PUT')).status);
    statuses.push((await harness.post('/notify', undefined, { authorization: '' })).status);
    expect(statuses).toEqual([401, 401, 401, 401]);
    expect(harness.standIn.requests).toEqual([]);
    expect(await harness.service.queue.counts()).toEqual({ pending: 0, running: 0, done: 0, failed: 0 });
    const results: number[] = [];
    for (let attempt = 0; attempt < 4; attempt++)
      results.push((await harness.post('/notify', body, { authorization: '' })).status);
    expect(results).toContain(429);
    const limited = await harness.post('/notify', body, { authorization: '' });
    expect(limited.status).toBe(429);
    expect(Number(limited.headers.get('retry-after'))).toBeGreaterThan(0);
  });

  it('empty-payload floods are rate limited', async () => {
    harness = await startIntakeHarness({ intake: { rateLimit: { emptyPayloadPerMinute: 3 } } });
    const statuses: number[] = [];
    for (let attempt = 0; attempt < 5; attempt++)
      statuses.push((await harness.post('/notify', undefined)).status);
    expect(statuses).toEqual([200, 200, 200, 429, 429]);
  });

  it('malformed bundles: 400/422 with an OperationOutcome, nothing queued', async () => {
    harness = await startIntakeHarness();
    const valid = notificationBundle({
      subscription: 'Subscription/x',
      counter: 1,
      events: [{ number: 1, focus: 'Encounter/e1' }],
    });
    const badType = structuredClone(valid) as {
      entry: { resource: { parameter: { name: string; valueCode?: string }[] } }[];
    };
    badType.entry[0].resource.parameter[3].valueCode = 'surprise';
    const badCount = notificationBundle({
      subscription: 'Subscription/x',
      counter: 1,
      events: [{ number: 1, focus: 'Encounter/e1' }],
    });
    (badCount.entry[0].resource.parameter[4] as { valueString: string }).valueString = 'many';
    const cases: [unknown, number][] = [
      ['{not json', 400],
      [{ resourceType: 'Bundle', type: 'searchset', entry: [] }, 400],
      [{ resourceType: 'Bundle', type: 'history', entry: [{ resource: { resourceType: 'Patient' } }] }, 400],
      [{ resourceType: 'Observation' }, 400],
      [badType, 422],
      [badCount, 422],
    ];
    for (const [body, status] of cases) {
      const response = await harness.post('/notify', body);
      expect(response.status, JSON.stringify(body).slice(0, 80)).toBe(status);
      expect((await response.json()).resourceType).toBe('OperationOutcome');
    }
    const wrongType = await harness.post('/notify', valid, { 'content-type': 'text/plain' });
    expect(wrongType.status).toBe(415);
    expect(await harness.service.queue.counts()).toEqual({ pending: 0, running: 0, done: 0, failed: 0 });
    expect(harness.standIn.requests).toEqual([]);
  });

  it('a UTF-8 byte order mark, valueDate timestamps, relative focus and a valueString subscription are accepted', async () => {
    harness = await startIntakeHarness();
    const [id] = seedEncounters(harness.standIn, 1);
    const bundle = notificationBundle({
      subscription: 'x',
      counter: 1,
      events: [{ number: 1, focus: `Encounter/${id}` }],
    });
    const parameters = bundle.entry[0].resource.parameter as Record<string, unknown>[];
    parameters[0] = { name: 'subscription', valueString: 'Subscription/lenient' };
    const part = (parameters[5] as { part: Record<string, unknown>[] }).part;
    part[1] = { name: 'timestamp', valueDate: '2026-11-27' };
    const response = await harness.post('/notify', `\uFEFF${JSON.stringify(bundle)}`);
    expect(response.status).toBe(200);
    await waitFor(() => draftsByEncounter((harness as IntakeHarness).standIn).get(id) === 1, 'draft');
  });
});
