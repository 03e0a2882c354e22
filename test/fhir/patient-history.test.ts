import type { Binary, DocumentReference, Encounter } from 'fhir/r4.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { readNoteText } from '../../fhir/note-text.ts';
import {
  openPatientScope,
  retrievePatientHistory,
  retrievePatientRecord,
} from '../../fhir/patient-history.ts';
import { PatientScopedReader } from '../../fhir/patient-scope.ts';
import { type FhirTestServer, startFhirTestServer } from './fhir-test-server.ts';
import { type ScriptedServer, sendFhir, startScriptedServer } from './scripted-server.ts';
import { create, latinText, type SeededChart, seedChart } from './seed.ts';

const draftSystem = 'urn:ehr-draft-agent:draft';
let server: FhirTestServer;
let chart: SeededChart;

beforeAll(async () => {
  server = await startFhirTestServer({ batch: true });
  chart = await seedChart(server.repository);
  // One of the service's own earlier drafts: never summarised again.
  await create<DocumentReference>(server.repository, {
    resourceType: 'DocumentReference',
    status: 'current',
    docStatus: 'preliminary',
    identifier: [{ system: draftSystem, value: 'x|progress-summary|extractive-1' }],
    subject: { reference: `Patient/${chart.patient.id}` },
    content: [
      { attachment: { contentType: 'text/plain', data: Buffer.from('old AI summary').toString('base64') } },
    ],
  });
});
afterAll(() => server.close());

const scriptedServers: ScriptedServer[] = [];
afterEach(async () => {
  await Promise.all(scriptedServers.splice(0).map((scripted) => scripted.close()));
});

describe('retrievePatientRecord', () => {
  it('reads the whole history in one batch when the server offers batch', async () => {
    server.setBatch(true);
    server.requests.length = 0;
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const record = await retrievePatientRecord(client, chart.encounter, {
      draftIdentifierSystem: draftSystem,
    });
    expect(record.patient.id).toBe(chart.patient.id);
    expect(record.conditions.map((condition) => condition.id).sort()).toEqual(
      chart.conditions.map((c) => c.id).sort(),
    );
    expect(record.observations).toHaveLength(1);
    // Own drafts left out; both real notes decoded (ISO-8859-1 inline, UTF-8 Binary behind a URL).
    expect(record.noteResources.map((note) => note.id).sort()).toEqual(
      [chart.latinNote.id, chart.binaryNote.id].sort(),
    );
    expect(record.notes.map((note) => note.text)).toEqual([
      latinText,
      'Follow-up: blood pressure 150/95, start lisinopril.',
    ]);
    // metadata + one batch + one Binary: three round trips for the whole chart.
    expect(server.requests.map((request) => `${request.method} ${request.url.split('?')[0]}`)).toEqual([
      'GET metadata',
      'POST ',
      expect.stringMatching(/^GET Binary\//),
    ]);
    expect(client.requestCount).toBe(3);
  });

  it('falls back to parallel per-type searches without batch, with _count and _elements', async () => {
    server.setBatch(false);
    server.requests.length = 0;
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const record = await retrievePatientRecord(client, chart.encounter, {
      draftIdentifierSystem: draftSystem,
      concurrency: 3,
    });
    expect(record.notes).toHaveLength(2);
    const searches = server.requests.filter((request) => request.url.includes('?'));
    expect(searches).toHaveLength(8);
    for (const search of searches) {
      expect(search.url).toContain(`patient=Patient%2F${chart.patient.id}`);
      expect(search.url).toContain('_count=200');
    }
    expect(searches.find((search) => search.url.startsWith('Encounter?'))?.url).toContain('_elements=');
  });
});

describe('a batch entry the server throttled', () => {
  it('is retried on its own (429 entry), the rest of the batch kept', async () => {
    const throttledType = 'Observation';
    const rogue = await startScriptedServer((request, response) => {
      const url = request.url ?? '';
      if (url.endsWith('/metadata'))
        return sendFhir(response, 200, {
          resourceType: 'CapabilityStatement',
          status: 'active',
          kind: 'instance',
          rest: [{ mode: 'server', interaction: [{ code: 'batch' }] }],
        });
      if (request.method === 'POST') {
        const bundle = JSON.parse(request.body) as { entry: { request: { url: string } }[] };
        return sendFhir(response, 200, {
          resourceType: 'Bundle',
          type: 'batch-response',
          entry: bundle.entry.map(({ request: entryRequest }) =>
            entryRequest.url.startsWith('Patient/')
              ? { resource: { resourceType: 'Patient', id: 'p1' }, response: { status: '200' } }
              : entryRequest.url.startsWith(throttledType)
                ? {
                    response: {
                      status: '429',
                      outcome: {
                        resourceType: 'OperationOutcome',
                        issue: [{ severity: 'error', code: 'throttled' }],
                      },
                    },
                  }
                : { resource: { resourceType: 'Bundle', type: 'searchset' }, response: { status: '200' } },
          ),
        });
      }
      // The retried search, on its own.
      return sendFhir(response, 200, {
        resourceType: 'Bundle',
        type: 'searchset',
        entry: [
          {
            resource: {
              resourceType: throttledType,
              id: 'o1',
              status: 'final',
              subject: { reference: 'Patient/p1' },
            },
          },
        ],
      });
    });
    scriptedServers.push(rogue);
    const encounter: Encounter = {
      resourceType: 'Encounter',
      id: 'e1',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: 'Patient/p1' },
    };
    const record = await retrievePatientRecord(new FhirClient({ baseUrl: `${rogue.url}/fhir` }), encounter, {
      draftIdentifierSystem: draftSystem,
    });
    expect(record.observations.map((observation) => observation.id)).toEqual(['o1']);
    expect(rogue.requests.map((request) => `${request.method} ${request.url.split('?')[0]}`)).toEqual([
      'GET /fhir/metadata',
      'POST /fhir/',
      'GET /fhir/Observation',
    ]);
  });
});

describe('notes behind attachment URLs', () => {
  it('fetches several Binaries in one batch round trip, each decoded with its charset', async () => {
    const own = await startFhirTestServer({ batch: true });
    try {
      const seeded = await seedChart(own.repository);
      const binary = await create<Binary>(own.repository, {
        resourceType: 'Binary',
        contentType: 'text/plain; charset=windows-1252',
        data: Buffer.from('Plan: naproxène 250 mg', 'latin1').toString('base64'),
      });
      await create<DocumentReference>(own.repository, {
        resourceType: 'DocumentReference',
        status: 'current',
        subject: { reference: `Patient/${seeded.patient.id}` },
        date: '2026-10-20T10:00:00Z',
        content: [{ attachment: { contentType: 'text/plain', url: `${own.baseUrl}/Binary/${binary.id}` } }],
      });
      own.requests.length = 0;
      const record = await retrievePatientRecord(new FhirClient({ baseUrl: own.baseUrl }), seeded.encounter, {
        draftIdentifierSystem: draftSystem,
      });
      expect(record.notes.map((note) => note.text)).toContain('Plan: naproxène 250 mg');
      expect(record.notes).toHaveLength(3);
      // metadata, the history batch, one batch for both Binaries: no request per note.
      expect(own.requests.map((request) => request.method)).toEqual(['GET', 'POST', 'POST']);
    } finally {
      await own.close();
    }
  });
});

describe('the compartment guard (PatientScopedReader)', () => {
  it('refuses to read another patient, or to widen a search, before any request is made', async () => {
    server.requests.length = 0;
    const reader = openPatientScope(new FhirClient({ baseUrl: server.baseUrl }), chart.encounter);
    expect(reader.patientId).toBe(chart.patient.id);
    await expect(reader.read('Patient', chart.otherPatient.id as string)).rejects.toMatchObject({
      status: 403,
    });
    await expect(
      reader.search('Condition', { patient: `Patient/${chart.otherPatient.id}` }),
    ).rejects.toMatchObject({ status: 403 });
    await expect(
      reader.search('Condition', { subject: `Patient/${chart.otherPatient.id}` }),
    ).rejects.toMatchObject({
      status: 403,
    });
    await expect(reader.search('Condition', { '_has:Encounter:patient:_id': 'x' })).rejects.toMatchObject({
      status: 403,
    });
    await expect(reader.read('Binary', 'anything')).rejects.toMatchObject({ status: 403 });
    expect(server.requests).toHaveLength(0);
  });

  it('refuses a resource of another patient that a read by id returns', async () => {
    const reader = openPatientScope(new FhirClient({ baseUrl: server.baseUrl }), chart.encounter);
    const others = await new FhirClient({ baseUrl: server.baseUrl }).search('Condition', {
      patient: `Patient/${chart.otherPatient.id}`,
    });
    await expect(reader.read('Condition', others[0].id as string)).rejects.toMatchObject({ status: 403 });
    await expect(reader.read('Condition', chart.conditions[0].id as string)).resolves.toMatchObject({
      id: chart.conditions[0].id,
    });
    expect(reader.reads.map((read) => read.reference)).toEqual([`Condition/${chart.conditions[0].id}`]);
  });

  it('refuses a search answer that smuggles in another patient', async () => {
    const rogue = await startScriptedServer((_request, response) =>
      sendFhir(response, 200, {
        resourceType: 'Bundle',
        type: 'searchset',
        entry: [
          { resource: { resourceType: 'Condition', id: 'mine', subject: { reference: 'Patient/p1' } } },
          { resource: { resourceType: 'Condition', id: 'theirs', subject: { reference: 'Patient/p2' } } },
        ],
      }),
    );
    scriptedServers.push(rogue);
    const reader = new PatientScopedReader(new FhirClient({ baseUrl: `${rogue.url}/fhir` }), 'p1');
    await expect(reader.search('Condition')).rejects.toMatchObject({ status: 403 });
  });

  it('fetches a Binary only for an admitted note, and refuses one whose securityContext is another patient', async () => {
    const rogue = await startScriptedServer((_request, response) =>
      sendFhir(response, 200, {
        resourceType: 'Binary',
        id: 'b1',
        contentType: 'text/plain',
        securityContext: { reference: 'Patient/p2' },
        data: Buffer.from('someone else').toString('base64'),
      }),
    );
    scriptedServers.push(rogue);
    const reader = new PatientScopedReader(new FhirClient({ baseUrl: `${rogue.url}/fhir` }), 'p1');
    const note: DocumentReference = {
      resourceType: 'DocumentReference',
      id: 'n1',
      status: 'current',
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { contentType: 'text/plain', url: 'Binary/b1' } }],
    };
    // Not admitted through the reader yet: refused without a request.
    await expect(readNoteText(reader, note)).rejects.toMatchObject({ status: 403 });
    expect(rogue.requests).toHaveLength(0);
    reader.admit(note);
    await expect(readNoteText(reader, note)).rejects.toMatchObject({ status: 403 });
  });

  it('retrieval through the reader records every resource it read, all of them the event patient', async () => {
    server.setBatch(true);
    const reader = openPatientScope(
      new FhirClient({ baseUrl: server.baseUrl }),
      chart.encounter as Encounter,
    );
    const record = await retrievePatientHistory(reader, chart.encounter, {
      draftIdentifierSystem: draftSystem,
    });
    expect(reader.reads.length).toBeGreaterThanOrEqual(8);
    expect(reader.reads.some((read) => read.reference === `Patient/${chart.otherPatient.id}`)).toBe(false);
    expect(record.notes).toHaveLength(2);
  });
});
