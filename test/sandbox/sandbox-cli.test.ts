import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Encounter, FhirResource } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { createSandboxProgram } from '../../src/cli/sandbox.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import type { RunningService } from '../../src/service.ts';
import { draftsFor, startSandboxService, waitForIdleQueue } from '../integration/service-harness.ts';

/**
 * `npm run sandbox -- load <folder>`: a user's own NDJSON written into the running service's sandbox
 * over FHIR, after which the service drafts for the loaded encounters as it would for a real EHR's.
 */
const npi = 'http://hl7.org/fhir/sid/us-npi';
const end = new Date();
const start = new Date(end.getTime() - 30 * 60_000);

const resources: FhirResource[] = [
  { resourceType: 'Patient', id: 'load-patient-1', gender: 'female', birthDate: '1960-02-03' },
  { resourceType: 'Practitioner', id: 'load-practitioner-1', identifier: [{ system: npi, value: '9999' }] },
  {
    resourceType: 'Encounter',
    id: 'load-encounter-1',
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject: { reference: 'Patient/load-patient-1' },
    participant: [{ individual: { reference: `Practitioner?identifier=${npi}|9999`, display: 'Dr. Load' } }],
    period: { start: start.toISOString(), end: end.toISOString() },
  },
  {
    resourceType: 'Condition',
    id: 'load-condition-1',
    clinicalStatus: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }],
    },
    code: { text: 'Hypertension' },
    subject: { reference: 'Patient/load-patient-1' },
    onsetDateTime: '2020-01-01',
  },
];

let service: RunningService;
let fhir: FhirClient;
let folder: string;

function program(output: string[]) {
  const port = new URL(service.url).port;
  return createSandboxProgram({
    io: { out: (text) => output.push(text), err: (text) => output.push(text) },
    // The configuration the service started with, as the CLI reads it from the same environment.
    config: () => loadConfig({ env: { PORT: port, DATA_DIR: folder }, cwd: folder }),
  });
}

beforeAll(async () => {
  ({ service, fhir } = await startSandboxService());
  folder = mkdtempSync(path.join(tmpdir(), 'sandbox-cli-'));
  const byType = Map.groupBy(resources, (resource) => resource.resourceType);
  for (const [type, items] of byType)
    writeFileSync(
      path.join(folder, `${type}.000.ndjson`),
      `${items.map((item) => JSON.stringify(item)).join('\n')}\n`,
    );
}, 60_000);

afterAll(async () => {
  await service?.close();
  rmSync(folder, { recursive: true, force: true });
});

describe('npm run sandbox -- load <folder>', () => {
  it("writes the folder into the running service's sandbox over FHIR, and the service drafts for it", async () => {
    const output: string[] = [];
    await program(output).parseAsync(['node', 'sandbox', 'load', folder]);
    const printed = output.join('');
    expect(printed).toContain(`loaded into ${service.fhirBaseUrl}`);
    expect(printed).toMatch(/Encounter\t1\n/);
    expect(printed).toContain('conditional references resolved: 1');

    const encounter = await fhir.read<Encounter>('Encounter', 'load-encounter-1');
    expect(encounter.participant?.[0].individual?.reference).toBe('Practitioner/load-practitioner-1');
    // The sandbox notified the service of the Encounter it was given, as a real EHR would.
    await expect
      .poll(async () => (await service.queue.counts()).pending + (await service.queue.counts()).done, {
        timeout: 20_000,
      })
      .toBeGreaterThan(0);
    await waitForIdleQueue(service);
    const drafts = await draftsFor(fhir, 'load-encounter-1');
    expect(drafts).toHaveLength(1);
    expect(Buffer.from(drafts[0].content[0].attachment.data ?? '', 'base64').toString()).toContain(
      '[Condition/load-condition-1]',
    );
  }, 60_000);

  it('loads again without duplicating (ids kept), and names what the server refused', async () => {
    const output: string[] = [];
    await program(output).parseAsync(['node', 'sandbox', 'load', folder, '--base', service.fhirBaseUrl]);
    const patients = await fhir.search('Patient', { _id: 'load-patient-1' });
    expect(patients).toHaveLength(1);

    process.env.SANDBOX_CLI_TEST_TOKEN = 'not-a-token-the-sandbox-issued';
    const refused = program([]).parseAsync([
      'node',
      'sandbox',
      'load',
      folder,
      '--base',
      service.fhirBaseUrl,
      '--token-env',
      'SANDBOX_CLI_TEST_TOKEN',
    ]);
    await expect(refused).rejects.toThrow(/answered the batch with 401/);
    delete process.env.SANDBOX_CLI_TEST_TOKEN;
  });
});
