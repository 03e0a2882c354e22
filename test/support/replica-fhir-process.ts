import type { AddressInfo } from 'node:net';
import express from 'express';
import type { Encounter, FhirResource } from 'fhir/r4.js';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';

/**
 * The replica test's FHIR server, in a process of its own: the project's sandbox engine (a real FHIR
 * engine: @medplum/fhir-router) seeded with `argv[2]` synthetic patients (the generator's histories,
 * notes and conditions, so rules fire) and `argv[3]` extra encounters each, `rep-<patient>-<n>`,
 * still in progress: the test finishes them, as a hospital would, before it notifies. Prints its URL.
 */
const patientCount = Number(process.argv[2] ?? 5);
const encountersEach = Number(process.argv[3] ?? 2);
const sandbox = createSandboxEhr();
const patients = generatePatients({ count: patientCount, seed: 17, maxNotesPerPatient: 4 });
const resources: FhirResource[] = patients.flatMap((patient) => patient.resources);
for (const [patientIndex, patient] of patients.entries()) {
  for (let number = 0; number < encountersEach; number++) {
    const encounter: Encounter = {
      resourceType: 'Encounter',
      id: `rep-${patientIndex}-${number}`,
      status: 'in-progress',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: `Patient/${patient.patientId}` },
      // Recent visits: the service does not draft encounters that ended long ago (drafts.maxAgeDays).
      period: { start: new Date(Date.now() - (number + 1) * 3_600_000).toISOString() },
    };
    resources.push(encounter);
  }
}
await sandbox.seed(resources);
const app = express();
app.use('/fhir', sandboxRouter(sandbox));
const server = app.listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(url);
  process.stdout.write(
    `${JSON.stringify({ url, patients: patients.map((patient) => patient.patientId) })}\n`,
  );
});
