// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP responses.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadNdjsonFolder, type NdjsonLoadResult, readNdjsonFolder } from '../../src/sandbox/load-ndjson.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import { fhirFetch, type RunningSandbox, startSandboxServer } from './sandbox-server.ts';

describe.skipIf(!sharedFixtures)('loading Synthea NDJSON into the sandbox', () => {
  let running: RunningSandbox;
  let base: string;
  let result: NdjsonLoadResult;
  const folder = path.join(sharedFixtures ?? '', 'synthea-r4');

  beforeAll(async () => {
    running = await startSandboxServer();
    base = running.baseUrl;
    result = await loadNdjsonFolder(running.sandbox, folder);
  });
  afterAll(async () => {
    await running?.close();
  });

  it('loads every resource with its id as given', async () => {
    expect(result.resourceCounts).toMatchObject({
      Patient: 9,
      DocumentReference: 413,
      Encounter: 413,
      Practitioner: 43,
    });
    expect(result.patientIds).toHaveLength(9);
    const encounters = await fhirFetch(`${base}/Encounter?_count=1`);
    expect(encounters.json.total).toBe(413);
    const firstPatient = await fhirFetch(`${base}/Patient/${result.patientIds[0]}`);
    expect(firstPatient.status).toBe(200);
    expect(firstPatient.json.id).toBe(result.patientIds[0]);
  });

  it('turns conditional practitioner references into readable ones', async () => {
    expect(result.resolvedReferences).toBeGreaterThan(1000);
    const page = await fhirFetch(`${base}/Encounter?_count=100`);
    const references: string[] = JSON.stringify(page.json).match(/"reference":"[^"]+"/g) ?? [];
    expect(references.some((reference) => reference.includes('?identifier='))).toBe(false);
    const practitioner = page.json.entry
      .flatMap((entry: any) => entry.resource.participant ?? [])
      .map((participant: any) => participant.individual?.reference)
      .find(Boolean);
    expect(practitioner).toMatch(/^Practitioner\/[0-9a-f-]+$/);
    const read = await fhirFetch(`${base}/${practitioner}`);
    expect(read.status).toBe(200);
    expect(read.json.resourceType).toBe('Practitioner');
  });

  it("finds each patient's notes by patient search", async () => {
    let total = 0;
    for (const patientId of result.patientIds) {
      const notes = await fhirFetch(`${base}/DocumentReference?patient=${patientId}&_count=1`);
      expect(notes.status).toBe(200);
      total += notes.json.total;
    }
    expect(total).toBe(413);
  });
});

describe('NDJSON input checks', () => {
  let folder: string;
  beforeAll(() => {
    folder = mkdtempSync(path.join(tmpdir(), 'sandbox-ndjson-'));
  });
  afterAll(() => rmSync(folder, { recursive: true, force: true }));

  it('drops conditional references that match nothing and names the bad line', async () => {
    writeFileSync(
      path.join(folder, 'Encounter.000.ndjson'),
      `${JSON.stringify({
        resourceType: 'Encounter',
        id: 'e1',
        status: 'finished',
        participant: [
          {
            individual: {
              reference: 'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|0000',
              display: 'Dr. Nobody',
            },
          },
          { individual: { reference: 'Practitioner?identifier=http://hl7.org/fhir/sid/us-npi|1111' } },
        ],
      })}\n`,
    );
    const resources = await readNdjsonFolder(folder);
    const seeded: unknown[] = [];
    const loaded = await loadNdjsonFolder({ seed: async (items) => void seeded.push(...items) }, folder);
    expect(resources).toHaveLength(1);
    expect(loaded.droppedReferences).toBe(2);
    expect((seeded[0] as any).participant).toEqual([{ individual: { display: 'Dr. Nobody' } }]);

    writeFileSync(
      path.join(folder, 'Patient.000.ndjson'),
      '{"resourceType":"Patient","id":"ok"}\n{"resourceType":"Patient","id":"bad id!"}\n',
    );
    await expect(readNdjsonFolder(folder)).rejects.toThrow('Patient.000.ndjson:2');
  });
});
