import { mkdtempSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { configSchema } from '../src/config/config-schema.ts';
import { sandboxRouter } from '../src/http/sandbox-routes.ts';
import { createLogger } from '../src/log.ts';
import { createSandboxEhr } from '../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../src/sandbox/synthetic-patients.ts';
import { startService } from '../src/service.ts';

/**
 * The processes bench/replicas.ts measures, one per invocation (argv[2]):
 * - `fhir <patients> <seed> <now>`: the sandbox EHR's engine behind HTTP in a process of its own, seeded with
 *   synthetic patients (their notes included); prints its base URL, then the ids of the finished encounters
 *   as one JSON line.
 * - `service <fhirBaseUrl> <databaseUrl> <secret> <concurrency>`: one replica of the service with the shared
 *   PostgreSQL queue (pg-boss) and the extractive engine; concurrency 0 makes an intake-only replica.
 *   Prints its URL.
 */
const role = process.argv[2];

if (role === 'fhir') {
  const [count, seed, now] = process.argv.slice(3);
  const sandbox = createSandboxEhr();
  const patients = generatePatients({ count: Number(count), seed: Number(seed), now: new Date(now) });
  const resources = patients.flatMap((patient) => patient.resources);
  await sandbox.seed(resources);
  const finished = resources.flatMap((resource) =>
    resource.resourceType === 'Encounter' && resource.status === 'finished' ? [resource.id as string] : [],
  );
  const app = express();
  app.use('/fhir', sandboxRouter(sandbox));
  const server = app.listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
    sandbox.setBaseUrl(url);
    process.stdout.write(`${url}\n${JSON.stringify(finished)}\n`);
  });
  process.on('SIGTERM', () => {
    server.close();
    void sandbox.close().finally(() => process.exit(0));
  });
} else if (role === 'service') {
  const [fhirBaseUrl, databaseUrl, secret, concurrency] = process.argv.slice(3);
  const config = configSchema.parse({
    port: 0,
    dataDir: mkdtempSync(path.join(tmpdir(), 'bench-replica-')),
    logLevel: 'warn',
    fhir: { baseUrl: fhirBaseUrl },
    notify: { secret },
    queue: { adapter: 'postgres', postgresUrl: databaseUrl, concurrency: Number(concurrency) },
    // Work arrives only as notifications: no polling, no Subscription made on the server.
    intake: { sources: { polling: false }, subscription: { ensureOnStart: false } },
    model: { provider: 'extractive' },
    // The synthetic encounters span years; every one is drafted, not only those of the last two weeks.
    drafts: { maxAgeDays: 0 },
  });
  const service = await startService(config, createLogger({ level: 'warn', destination: process.stderr }));
  process.stdout.write(`${service.url}\n`);
  process.on('SIGTERM', () => void service.close().then(() => process.exit(0)));
} else {
  process.stderr.write(
    'usage: replicas.support.ts fhir <patients> <seed> <now> | service <fhirBaseUrl> <databaseUrl> <secret> <concurrency>\n',
  );
  process.exit(2);
}
