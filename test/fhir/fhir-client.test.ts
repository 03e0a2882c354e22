import type { Bundle, DocumentReference, Patient } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { FhirClient, staticAccessToken } from '../../fhir/fhir-client.ts';
import { readNoteText } from '../../fhir/note-text.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { type ScriptedServer, sendFhir, startScriptedServer } from './scripted-server.ts';

const servers: ScriptedServer[] = [];
afterEach(async () => {
  await Promise.all(servers.splice(0).map((server) => server.close()));
});

async function scripted(...args: Parameters<typeof startScriptedServer>) {
  const server = await startScriptedServer(...args);
  servers.push(server);
  return server;
}

const patient: Patient = { resourceType: 'Patient', id: 'p1' };

function recordingSleep() {
  const waits: number[] = [];
  return { waits, sleep: async (milliseconds: number) => void waits.push(milliseconds) };
}

describe('FhirClient resilience', () => {
  it('retries a 429 after the Retry-After the server asked for', async () => {
    const server = await scripted((_request, response, index) =>
      index === 0
        ? sendFhir(
            response,
            429,
            { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'throttled' }] },
            { 'retry-after': '2' },
          )
        : sendFhir(response, 200, patient),
    );
    const { waits, sleep } = recordingSleep();
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep });
    await expect(client.read<Patient>('Patient', 'p1')).resolves.toMatchObject({ id: 'p1' });
    expect(server.requests).toHaveLength(2);
    expect(waits).toEqual([2000]);
  });

  it('retries a 503 (HTTP-date Retry-After) and gives up after maxAttempts with the server outcome', async () => {
    const unavailable = {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'transient', diagnostics: 'maintenance window' }],
    };
    const server = await scripted((_request, response) =>
      sendFhir(response, 503, unavailable, { 'retry-after': new Date(Date.now() + 3_000).toUTCString() }),
    );
    const { waits, sleep } = recordingSleep();
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep, maxAttempts: 3 });
    const error = await client.read('Patient', 'p1').catch((caught: unknown) => caught);
    expect(error).toBeInstanceOf(OperationOutcomeError);
    expect((error as OperationOutcomeError).status).toBe(503);
    // The server's own OperationOutcome travels with the error.
    expect((error as OperationOutcomeError).outcome).toEqual(unavailable);
    expect(server.requests).toHaveLength(3);
    expect(waits).toHaveLength(2);
    for (const wait of waits) expect(wait).toBeGreaterThan(500);
  });

  it('does not retry a 4xx and keeps the server OperationOutcome', async () => {
    const invalid = {
      resourceType: 'OperationOutcome',
      issue: [{ severity: 'error', code: 'invalid', diagnostics: 'bad subject' }],
    };
    const server = await scripted((_request, response) => sendFhir(response, 422, invalid));
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep: async () => {} });
    const error = (await client
      .create({ resourceType: 'Observation', status: 'final', code: { text: 'x' } })
      .catch((caught: unknown) => caught)) as OperationOutcomeError;
    expect(error.status).toBe(422);
    expect(error.outcome).toEqual(invalid);
    expect(server.requests).toHaveLength(1);
  });

  it('times out a request that never answers, retrying within maxAttempts', async () => {
    const server = await scripted(() => {
      /* never answers */
    });
    const client = new FhirClient({
      baseUrl: `${server.url}/fhir`,
      timeoutMs: 150,
      maxAttempts: 2,
      sleep: async () => {},
    });
    const error = (await client
      .read('Patient', 'p1')
      .catch((caught: unknown) => caught)) as OperationOutcomeError;
    expect(error).toBeInstanceOf(OperationOutcomeError);
    expect(error.status).toBe(504);
    expect(error.outcome.issue[0].code).toBe('timeout');
    expect(server.requests).toHaveLength(2);
  });

  it('on 401 invalidates the refused token and retries once with a fresh one', async () => {
    const server = await scripted((request, response) =>
      request.headers.authorization === 'Bearer second'
        ? sendFhir(response, 200, patient)
        : sendFhir(response, 401, {
            resourceType: 'OperationOutcome',
            issue: [{ severity: 'error', code: 'login' }],
          }),
    );
    const tokens = ['first', 'second', 'third'];
    let current = tokens.shift();
    const invalidated: (string | undefined)[] = [];
    const client = new FhirClient({
      baseUrl: `${server.url}/fhir`,
      accessToken: {
        getToken: async () => current,
        invalidate: (rejected) => {
          invalidated.push(rejected);
          current = tokens.shift();
        },
      },
    });
    await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ id: 'p1' });
    expect(invalidated).toEqual(['first']);
    expect(server.requests.map((request) => request.authorization)).toEqual([
      'Bearer first',
      'Bearer second',
    ]);

    // A second 401 in a row stands: one refresh per call, no loop.
    current = 'revoked';
    tokens.splice(0, tokens.length, 'also-revoked');
    const error = (await client
      .read('Patient', 'p1')
      .catch((caught: unknown) => caught)) as OperationOutcomeError;
    expect(error.status).toBe(401);
  });

  it('refuses a next link on another origin, and that origin never sees a request', async () => {
    const elsewhere = await scripted((_request, response) =>
      sendFhir(response, 200, { resourceType: 'Bundle', type: 'searchset' }),
    );
    const server = await scripted((_request, response) => {
      const page: Bundle = {
        resourceType: 'Bundle',
        type: 'searchset',
        link: [{ relation: 'next', url: `${elsewhere.url}/fhir/Condition?page=2` }],
        entry: [
          {
            resource: { resourceType: 'Condition', id: 'c1', subject: { reference: 'Patient/p1' } } as never,
          },
        ],
      };
      sendFhir(response, 200, page);
    });
    const client = new FhirClient({
      baseUrl: `${server.url}/fhir`,
      accessToken: staticAccessToken('secret-token'),
    });
    const error = (await client
      .search('Condition', { patient: 'Patient/p1' })
      .catch((caught: unknown) => caught)) as OperationOutcomeError;
    expect(error).toBeInstanceOf(OperationOutcomeError);
    expect(error.outcome.issue[0].code).toBe('security');
    expect(server.requests).toHaveLength(1);
    expect(elsewhere.requests).toHaveLength(0);
  });

  it('follows same-origin next links (relative and absolute) up to the page cap', async () => {
    let server: ScriptedServer | undefined;
    server = await scripted((request, response) => {
      const page = Number(new URL(request.url ?? '', 'http://x').searchParams.get('page') ?? '1');
      sendFhir(response, 200, {
        resourceType: 'Bundle',
        type: 'searchset',
        entry: [
          { resource: { resourceType: 'Condition', id: `c${page}` } },
          { search: { mode: 'include' }, resource: { resourceType: 'Condition', id: 'included' } },
        ],
        link: page < 3 ? [{ relation: 'next', url: `${server?.url}/fhir/Condition?page=${page + 1}` }] : [],
      });
    });
    const client = new FhirClient({ baseUrl: `${server.url}/fhir` });
    const results = await client.search('Condition', {});
    expect(results.map((condition) => condition.id)).toEqual(['c1', 'c2', 'c3']);
    const capped = new FhirClient({ baseUrl: `${server.url}/fhir`, maxPages: 2 });
    await expect(capped.search('Condition', {})).rejects.toMatchObject({ status: 502 });
  });

  it('refuses an attachment URL on another origin before any request reaches it', async () => {
    const elsewhere = await scripted((_request, response) =>
      sendFhir(response, 200, { resourceType: 'Binary', data: '' }),
    );
    const server = await scripted((_request, response) => sendFhir(response, 200, patient));
    const client = new FhirClient({
      baseUrl: `${server.url}/fhir`,
      accessToken: staticAccessToken('secret-token'),
    });
    const note: DocumentReference = {
      resourceType: 'DocumentReference',
      id: 'n1',
      status: 'current',
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { contentType: 'text/plain', url: `${elsewhere.url}/Binary/b1` } }],
    };
    await expect(readNoteText(client, note)).rejects.toMatchObject({ status: 502 });
    expect(elsewhere.requests).toHaveLength(0);
    expect(server.requests).toHaveLength(0);
  });

  it('never writes a final note unless it is a clinician sign-off', async () => {
    const server = await scripted((request, response) =>
      sendFhir(response, 201, { ...JSON.parse(request.body), id: 'd1' }),
    );
    const client = new FhirClient({ baseUrl: `${server.url}/fhir` });
    const finalNote: DocumentReference = {
      resourceType: 'DocumentReference',
      status: 'current',
      docStatus: 'final',
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { data: 'eA==' } }],
    };
    await expect(client.create(finalNote)).rejects.toMatchObject({ status: 403 });
    await expect(client.update({ ...finalNote, id: 'd1', docStatus: 'amended' })).rejects.toMatchObject({
      status: 403,
    });
    await expect(
      client.create(finalNote, { signOff: { practitioner: 'not-a-reference' } }),
    ).rejects.toMatchObject({
      status: 403,
    });
    expect(server.requests).toHaveLength(0);
    await expect(
      client.create(finalNote, { signOff: { practitioner: 'Practitioner/pr9' } }),
    ).resolves.toMatchObject({
      created: true,
    });
    expect(server.requests).toHaveLength(1);
  });

  it('sends several reads as one batch Bundle and returns refused entries as errors', async () => {
    const server = await scripted((request, response) => {
      const bundle = JSON.parse(request.body) as Bundle;
      expect(bundle.type).toBe('batch');
      sendFhir(response, 200, {
        resourceType: 'Bundle',
        type: 'batch-response',
        entry: [
          { resource: patient, response: { status: '200 OK' } },
          {
            response: {
              status: '404',
              outcome: {
                resourceType: 'OperationOutcome',
                issue: [{ severity: 'error', code: 'not-found' }],
              },
            },
          },
        ],
      });
    });
    const client = new FhirClient({ baseUrl: `${server.url}/fhir` });
    const [found, missing] = await client.batch([{ url: 'Patient/p1' }, { url: 'Patient/gone' }]);
    expect(found).toMatchObject({ resourceType: 'Patient', id: 'p1' });
    expect(missing).toBeInstanceOf(OperationOutcomeError);
    expect((missing as OperationOutcomeError).status).toBe(404);
    expect(server.requests).toHaveLength(1);
    expect(server.requests[0].method).toBe('POST');
  });
});

describe('FhirClient never builds a URL from an id that is not a FHIR id', () => {
  const badIds = ['..', '.', '...', 'a/b', 'a?b', 'a#b', '', 'x'.repeat(65)];

  async function refused(call: () => Promise<unknown>, status = 400) {
    const error = (await call().catch((caught: unknown) => caught)) as OperationOutcomeError;
    expect(error).toBeInstanceOf(OperationOutcomeError);
    expect(error.status).toBe(status);
    expect(error.outcome.issue[0].code).toBe('invalid');
    expect(error.isRetryable).toBe(false);
  }

  it('refuses dot-only and path-breaking ids in read, vread and update, sending nothing', async () => {
    const server = await scripted((_request, response) => sendFhir(response, 200, patient));
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep: async () => {} });
    for (const id of badIds) {
      await refused(() => client.read('Encounter', id));
      await refused(() => client.vread('Encounter', id, '1'));
      await refused(() => client.vread('Encounter', 'e1', id));
      await refused(() => client.update({ resourceType: 'Patient', id }));
      // An empty version means no If-Match at all; every other bad one is refused.
      if (id !== '')
        await refused(() => client.update({ resourceType: 'Patient', id: 'p1' }, { ifMatchVersion: id }));
    }
    await refused(() => client.read('../metadata' as 'Patient', 'p1'));
    await refused(() => client.searchPage('Patient/..', {}));
    await refused(() => client.create({ resourceType: 'Patient/..' as 'Patient' }));
    expect(server.requests).toHaveLength(0);
    // The same calls with real ids go through.
    await expect(client.read('Patient', 'p1')).resolves.toMatchObject({ id: 'p1' });
    await expect(client.read('Patient', 'a.b-1')).resolves.toMatchObject({ id: 'p1' });
    expect(server.requests.map((request) => request.url)).toEqual([
      '/fhir/Patient/p1',
      '/fhir/Patient/a.b-1',
    ]);
  });

  it('refuses references and URLs with a dot-only segment, however they are spelled', async () => {
    const server = await scripted((_request, response) => sendFhir(response, 200, patient));
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep: async () => {} });
    for (const reference of [
      'Patient/..',
      'Patient/.',
      'Binary/%2e%2e',
      'Binary/.%2E',
      'Binary/..%2f..',
      'Binary\\..',
      'DocumentReference/d1/_history/..',
      '../Patient/p1',
      `${server.url}/fhir/Patient/..`,
      `${server.url}/fhir/Binary/%2E%2E?_format=json`,
    ]) {
      await refused(() => client.get(reference));
      expect(() => client.resolveUrl(reference)).toThrow(OperationOutcomeError);
    }
    await refused(() => client.batch([{ url: 'Patient/p1' }, { url: 'Patient/..' }]));
    const note: DocumentReference = {
      resourceType: 'DocumentReference',
      id: 'n1',
      status: 'current',
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { contentType: 'text/plain', url: 'Binary/..' } }],
    };
    await refused(() => readNoteText(client, note));
    expect(server.requests).toHaveLength(0);
    // Dots inside a segment are ordinary id characters.
    await expect(client.get('Patient/p.1')).resolves.toMatchObject({ id: 'p1' });
  });

  it('an event whose Encounter names Patient/.. is refused without any request for a dot-only path', async () => {
    const server = await scripted((_request, response) =>
      sendFhir(response, 404, {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'not-found' }],
      }),
    );
    const client = new FhirClient({ baseUrl: `${server.url}/fhir`, sleep: async () => {} });
    const encounter = {
      resourceType: 'Encounter' as const,
      id: 'e1',
      status: 'finished' as const,
      class: { code: 'AMB' },
      subject: { reference: 'Patient/..' },
    };
    // The patient guard refuses the subject before the client is asked for anything (422: the Encounter is bad).
    await refused(() => retrievePatientRecord(client, encounter, { draftIdentifierSystem: 'urn:x' }), 422);
    for (const request of server.requests) {
      const path = new URL(request.url, 'http://x').pathname;
      expect(path.split('/').some((segment) => /^\.+$/.test(segment))).toBe(false);
      expect(path).not.toBe('/fhir/');
    }
  });
});
