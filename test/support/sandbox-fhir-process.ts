import type { AddressInfo } from 'node:net';
import express from 'express';
import type { FhirResource } from 'fhir/r4.js';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';

/**
 * The project's sandbox EHR (a real FHIR engine: @medplum/fhir-router) as a FHIR server in a process
 * of its own, seeded with one patient and `argv[2]` finished encounters `enc-0`...; prints its URL.
 * Used by the crash test so the writes it checks go through the same engine the sandbox runs.
 */
const count = Number(process.argv[2] ?? 0);
const sandbox = createSandboxEhr();
const patient = 'crash-patient';
const visitStart = new Date(Date.now() - 24 * 60 * 60 * 1000);
const resources: FhirResource[] = [
  {
    resourceType: 'Patient',
    id: patient,
    gender: 'female',
    birthDate: '1970-01-01',
    name: [{ family: 'Synthetic' }],
  },
  {
    resourceType: 'Condition',
    id: 'crash-condition',
    subject: { reference: `Patient/${patient}` },
    code: { text: 'Type 2 diabetes mellitus' },
  },
  ...Array.from(
    { length: count },
    (_, index): FhirResource => ({
      resourceType: 'Encounter',
      id: `enc-${index}`,
      status: 'finished',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: `Patient/${patient}` },
      // Ended yesterday: recent enough for the service's drafts.maxAgeDays, whatever day the tests run.
      period: {
        start: visitStart.toISOString(),
        end: new Date(visitStart.getTime() + 1_800_000).toISOString(),
      },
    }),
  ),
];
await sandbox.seed(resources);
const app = express();
app.use('/fhir', sandboxRouter(sandbox));
const server = app.listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(url);
  process.stdout.write(`${url}\n`);
});
