import type { AddressInfo } from 'node:net';
import express from 'express';
import { sandboxRouter } from '../src/http/sandbox-routes.ts';
import { createSandboxEhr } from '../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../src/sandbox/synthetic-patients.ts';

/**
 * The FHIR server bench/rules.ts retrieves from, in a process of its own (as a hospital's server is):
 * the sandbox EHR's engine behind HTTP, seeded with `count` synthetic patients (argv: count, seed,
 * reference date). Prints its base URL on the first line of stdout once seeded.
 */
const [count, seed, now] = process.argv.slice(2);
const sandbox = createSandboxEhr();
const patients = generatePatients({
  count: Number(count),
  seed: Number(seed),
  now: new Date(now),
  notesPerEncounter: 0,
});
await sandbox.seed(patients.flatMap((patient) => patient.resources));
const app = express();
app.use('/fhir', sandboxRouter(sandbox));
const server = app.listen(0, '127.0.0.1', () => {
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(url);
  process.stdout.write(`${url}\n`);
});
process.on('SIGTERM', () => {
  server.close();
  void sandbox.close().finally(() => process.exit(0));
});
