// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP responses.
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { sandboxProfileByKey } from '../../src/sandbox/patient-profiles.ts';
import { generatePatients, sandboxIdentifierSystems } from '../../src/sandbox/synthetic-patients.ts';
import { fhirFetch, type RunningSandbox, startSandboxServer } from './sandbox-server.ts';

describe('sandbox EHR over HTTP', () => {
  let running: RunningSandbox;
  let base: string;
  const patients = generatePatients({ count: 4, seed: 11, now: new Date('2026-11-27T00:00:00Z') });
  const longHistory = patients[sandboxProfileByKey('long-history').index];

  beforeAll(async () => {
    running = await startSandboxServer({ defaultPageSize: 50 }, { maxBodyBytes: 200_000 });
    base = running.baseUrl;
    await running.sandbox.seed(patients.flatMap((patient) => patient.resources));
  });
  afterAll(async () => {
    await running?.close();
  });

  it('creates, reads, updates and keeps history with versions, ETag and Location', async () => {
    const created = await fhirFetch(`${base}/Patient`, {
      method: 'POST',
      body: { resourceType: 'Patient', name: [{ family: 'Testcase', given: ['Rest'] }] },
    });
    expect(created.status).toBe(201);
    const id = created.json.id as string;
    const firstVersion = created.json.meta.versionId as string;
    expect(created.headers.get('location')).toBe(`${base}/Patient/${id}/_history/${firstVersion}`);
    expect(created.headers.get('etag')).toBe(`W/"${firstVersion}"`);
    expect(created.headers.get('content-type')).toMatch(/^application\/fhir\+json/);

    const read = await fhirFetch(`${base}/Patient/${id}`);
    expect(read.status).toBe(200);
    expect(read.json.name[0].family).toBe('Testcase');
    expect(read.headers.get('last-modified')).toBeTruthy();
    const head = await fetch(`${base}/Patient/${id}`, { method: 'HEAD' });
    expect(head.status).toBe(200);
    expect(head.headers.get('etag')).toBe(`W/"${firstVersion}"`);

    const updated = await fhirFetch(`${base}/Patient/${id}`, {
      method: 'PUT',
      body: { ...read.json, active: true },
    });
    expect(updated.status).toBe(200);
    const secondVersion = updated.json.meta.versionId as string;
    expect(secondVersion).not.toBe(firstVersion);
    expect(updated.headers.get('etag')).toBe(`W/"${secondVersion}"`);

    // Version-aware updates: a stale If-Match is refused, whichever ETag spelling the client uses.
    for (const stale of [`W/"${firstVersion}"`, `"${firstVersion}"`, firstVersion]) {
      const refused = await fhirFetch(`${base}/Patient/${id}`, {
        method: 'PUT',
        body: { ...read.json, active: false },
        headers: { 'if-match': stale },
      });
      expect(refused.status, stale).toBe(412);
    }

    const history = await fhirFetch(`${base}/Patient/${id}/_history`);
    expect(history.json.type).toBe('history');
    expect(history.json.entry.map((entry: any) => entry.resource.meta.versionId)).toEqual([
      secondVersion,
      firstVersion,
    ]);
    // Reading history twice must not flip its order.
    const again = await fhirFetch(`${base}/Patient/${id}/_history`);
    expect(again.json.entry.map((entry: any) => entry.resource.meta.versionId)).toEqual([
      secondVersion,
      firstVersion,
    ]);

    const version = await fhirFetch(`${base}/Patient/${id}/_history/${firstVersion}`);
    expect(version.status).toBe(200);
    expect(version.json.active).toBeUndefined();

    const putCreate = await fhirFetch(`${base}/Patient/made-by-put`, {
      method: 'PUT',
      body: { resourceType: 'Patient', id: 'made-by-put' },
    });
    expect(putCreate.status).toBe(201);
    expect(putCreate.headers.get('location')).toContain(`${base}/Patient/made-by-put/_history/`);
  });

  it('answers 404 for unknown and 410 for deleted resources, with OperationOutcomes', async () => {
    const missing = await fhirFetch(`${base}/Patient/does-not-exist`);
    expect(missing.status).toBe(404);
    expect(missing.json.resourceType).toBe('OperationOutcome');
    const created = await fhirFetch(`${base}/Observation`, {
      method: 'POST',
      body: { resourceType: 'Observation', status: 'final', code: { text: 'temporary' } },
    });
    const deleted = await fhirFetch(`${base}/Observation/${created.json.id}`, { method: 'DELETE' });
    expect(deleted.status).toBeLessThan(300);
    const gone = await fhirFetch(`${base}/Observation/${created.json.id}`);
    expect(gone.status).toBe(410);
    expect(gone.json.issue[0].code).toBe('deleted');
  });

  it('pages searches with absolute next links and finds by bare or typed patient ids', async () => {
    const patientId = longHistory.patientId;
    const expected = longHistory.resources.filter(
      (resource) => resource.resourceType === 'DocumentReference',
    ).length;
    expect(expected).toBeGreaterThan(300);
    const seen = new Set<string>();
    let url: string | undefined = `${base}/DocumentReference?patient=${patientId}`;
    let pages = 0;
    while (url) {
      expect(url.startsWith(`${base}/DocumentReference?`)).toBe(true);
      const page = await fhirFetch(url);
      expect(page.status).toBe(200);
      expect(page.json.total).toBe(expected);
      expect(page.json.entry.length).toBeLessThanOrEqual(50);
      for (const entry of page.json.entry) {
        expect(entry.fullUrl).toBe(`${base}/DocumentReference/${entry.resource.id}`);
        seen.add(entry.resource.id);
      }
      url = page.json.link.find((link: any) => link.relation === 'next')?.url;
      pages++;
    }
    expect(seen.size).toBe(expected);
    expect(pages).toBe(Math.ceil(expected / 50));

    const typed = await fhirFetch(`${base}/Encounter?patient=Patient/${patientId}&_count=1`);
    const bare = await fhirFetch(`${base}/Encounter?patient=${patientId}&_count=1`);
    expect(bare.json.total).toBe(typed.json.total);
    expect(bare.json.total).toBeGreaterThan(100);
    const counted = await fhirFetch(`${base}/DocumentReference?patient=${patientId}&_summary=count`);
    expect(counted.json.total).toBe(expected);
    expect(counted.json.entry).toBeUndefined();
    const other = await fhirFetch(`${base}/Encounter?patient=${patients[1].patientId}&_count=1`);
    expect(other.json.total).toBeLessThan(bare.json.total);
  });

  it('searches and sorts by _lastUpdated, and finds notes by identifier', async () => {
    const before = new Date(Date.now() - 1000).toISOString();
    const created = await fhirFetch(`${base}/Encounter`, {
      method: 'POST',
      body: {
        resourceType: 'Encounter',
        status: 'planned',
        class: { code: 'AMB' },
        subject: { reference: 'Patient/sbx-0001' },
      },
    });
    const recent = await fhirFetch(
      `${base}/Encounter?_lastUpdated=gt${encodeURIComponent(before)}&_sort=-_lastUpdated`,
    );
    expect(recent.json.entry.map((entry: any) => entry.resource.id)).toContain(created.json.id);
    const times = recent.json.entry.map((entry: any) => entry.resource.meta.lastUpdated);
    expect([...times].sort().reverse()).toEqual(times);

    const note = longHistory.resources.find((resource) => resource.resourceType === 'DocumentReference')!;
    const byIdentifier = await fhirFetch(
      `${base}/DocumentReference?identifier=${encodeURIComponent(`${sandboxIdentifierSystems.document}|${note.id}`)}`,
    );
    expect(byIdentifier.json.total).toBe(1);
    expect(byIdentifier.json.entry[0].resource.id).toBe(note.id);
  });

  it('creates conditionally: 201 the first time, 200 with the same resource after', async () => {
    const draft = {
      resourceType: 'DocumentReference',
      status: 'current',
      docStatus: 'preliminary',
      identifier: [{ system: 'urn:test:draft', value: 'enc-1|summary|1' }],
      subject: { reference: 'Patient/sbx-0000' },
      content: [{ attachment: { contentType: 'text/plain', data: Buffer.from('draft').toString('base64') } }],
    };
    const ifNoneExist = { 'if-none-exist': 'identifier=urn:test:draft|enc-1|summary|1' };
    const first = await fhirFetch(`${base}/DocumentReference`, {
      method: 'POST',
      body: draft,
      headers: ifNoneExist,
    });
    expect(first.status).toBe(201);
    const second = await fhirFetch(`${base}/DocumentReference`, {
      method: 'POST',
      body: draft,
      headers: ifNoneExist,
    });
    expect(second.status).toBe(200);
    expect(second.json.id).toBe(first.json.id);
    const found = await fhirFetch(`${base}/DocumentReference?identifier=urn:test:draft|enc-1|summary|1`);
    expect(found.json.total).toBe(1);
    // Pipes inside the value may also arrive escaped (FHIR search syntax).
    const escaped = await fhirFetch(
      `${base}/DocumentReference?identifier=${encodeURIComponent('urn:test:draft|enc-1\\|summary\\|1')}`,
    );
    expect(escaped.json.total).toBe(1);
    const otherValue = await fhirFetch(`${base}/DocumentReference?identifier=urn:test:draft|enc-1|summary|2`);
    expect(otherValue.json.total).toBe(0);
  });

  it('serves Binary notes as FHIR JSON or raw text', async () => {
    const note = longHistory.resources.find(
      (resource) => resource.resourceType === 'DocumentReference' && resource.content[0].attachment.url,
    ) as { content: { attachment: { url: string } }[] };
    const url = `${base}/${note.content[0].attachment.url}`;
    const asJson = await fhirFetch(url);
    expect(asJson.json.resourceType).toBe('Binary');
    const text = Buffer.from(asJson.json.data, 'base64').toString('utf8');
    expect(text).toMatch(/PROGRESS NOTE|TELEPHONE FOLLOW-UP NOTE/);
    const raw = await fetch(url, { headers: { accept: 'text/plain' } });
    expect(raw.headers.get('content-type')).toBe('text/plain; charset=utf-8');
    expect(await raw.text()).toBe(text);
  });

  it('runs transaction Bundles with internal references', async () => {
    const result = await fhirFetch(base, {
      method: 'POST',
      body: {
        resourceType: 'Bundle',
        type: 'transaction',
        entry: [
          {
            fullUrl: 'urn:uuid:6a3c2f4e-4b1f-4e7a-9a55-1a2b3c4d5e6f',
            resource: { resourceType: 'Patient', name: [{ family: 'Transactional' }] },
            request: { method: 'POST', url: 'Patient' },
          },
          {
            resource: {
              resourceType: 'Encounter',
              status: 'finished',
              class: { code: 'AMB' },
              subject: { reference: 'urn:uuid:6a3c2f4e-4b1f-4e7a-9a55-1a2b3c4d5e6f' },
            },
            request: { method: 'POST', url: 'Encounter' },
          },
        ],
      },
    });
    expect(result.status).toBe(200);
    expect(result.json.type).toBe('transaction-response');
    expect(result.json.entry.map((entry: any) => entry.response.status)).toEqual(['201', '201']);
    const patientId = result.json.entry[0].resource.id;
    const encounter = await fhirFetch(`${base}/${result.json.entry[1].response.location}`);
    expect(encounter.json.subject.reference).toBe(`Patient/${patientId}`);
  });

  it('serves a CapabilityStatement and extra routes added later', async () => {
    const metadata = await fhirFetch(`${base}/metadata`);
    expect(metadata.json.resourceType).toBe('CapabilityStatement');
    expect(metadata.json.fhirVersion).toBe('4.0.1');
    expect(metadata.json.rest[0].resource.map((resource: any) => resource.type)).toContain(
      'DocumentReference',
    );
    running.sandbox.addRoute('GET', '.well-known/smart-configuration', (request) => ({
      status: 200,
      headers: { 'content-type': 'application/json' },
      body: { resourceType: 'Basic', id: request.baseUrl } as never,
    }));
    const extra = await fhirFetch(`${base}/.well-known/smart-configuration`);
    expect(extra.status).toBe(200);
    expect(extra.json.id).toBe(base);
  });

  it('refuses bad input with OperationOutcomes', async () => {
    const malformed = await fhirFetch(`${base}/Patient`, { method: 'POST', body: '{"resourceType":' });
    expect(malformed.status).toBe(400);
    expect(malformed.json.resourceType).toBe('OperationOutcome');
    const wrongType = await fhirFetch(`${base}/Patient`, {
      method: 'POST',
      body: 'resourceType=Patient',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
    });
    expect(wrongType.status).toBe(415);
    const mismatch = await fhirFetch(`${base}/Patient`, {
      method: 'POST',
      body: { resourceType: 'Observation' },
    });
    expect(mismatch.status).toBe(400);
    const tooLarge = await fhirFetch(`${base}/Patient`, {
      method: 'POST',
      body: { resourceType: 'Patient', text: { status: 'generated', div: 'x'.repeat(300_000) } },
    });
    expect(tooLarge.status).toBe(413);
    expect(tooLarge.json.issue[0].code).toBe('too-long');
  });
});
