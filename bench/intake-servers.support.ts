import { mkdtempSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { configSchema } from '../src/config/config-schema.ts';
import { sandboxRouter } from '../src/http/sandbox-routes.ts';
import { createLogger } from '../src/log.ts';
import { createSandboxEhr } from '../src/sandbox/sandbox-ehr.ts';
import { startService } from '../src/service.ts';

/**
 * The processes bench/intake.ts measures, one per invocation (argv[2]):
 * - `fhir`: a FHIR server (the sandbox EHR's engine behind HTTP), in a process of its own;
 * - `service <fhirBaseUrl> <secret>`: the service with its durable SQLite queue, pointed at it;
 * - `intake-only <fhirBaseUrl> <secret>`: the same with no workers (queue.concurrency 0);
 * - `bare`: the baseline, an express 5 endpoint that parses the same JSON and answers 200.
 * Each prints its URL on the first line of stdout.
 */
const role = process.argv[2];
const fhirTypes = ['application/fhir+json', 'application/json'];

if (role === 'fhir') {
  const sandbox = createSandboxEhr();
  const app = express();
  app.use('/fhir', sandboxRouter(sandbox));
  const server = app.listen(0, '127.0.0.1', () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
    sandbox.setBaseUrl(url);
    process.stdout.write(`${url}\n`);
  });
} else if (role === 'service' || role === 'intake-only') {
  const [fhirBaseUrl, secret] = process.argv.slice(3);
  const config = configSchema.parse({
    port: 0,
    dataDir: mkdtempSync(path.join(tmpdir(), 'bench-intake-')),
    logLevel: 'warn',
    fhir: { baseUrl: fhirBaseUrl },
    notify: { secret },
    // intake-only: no workers in this process, so what is measured is intake alone.
    queue: { concurrency: role === 'intake-only' ? 0 : 2 },
    intake: { sources: { polling: false }, subscription: { ensureOnStart: false } },
  });
  const service = await startService(config, createLogger({ level: 'warn', destination: process.stderr }));
  process.stdout.write(`${service.url}\n`);
  process.on('SIGTERM', () => void service.close().then(() => process.exit(0)));
} else if (role === 'bare') {
  const app = express();
  app.post('/notify', express.json({ type: fhirTypes, limit: 1_048_576 }), (request, response) => {
    response
      .status(200)
      .type('application/fhir+json')
      .json({
        resourceType: 'OperationOutcome',
        issue: [
          { severity: 'information', code: 'informational', diagnostics: `accepted ${request.body?.type}` },
        ],
      });
  });
  const server = app.listen(0, '127.0.0.1', () => {
    process.stdout.write(`http://127.0.0.1:${(server.address() as AddressInfo).port}\n`);
  });
} else {
  process.stderr.write('usage: intake-servers.support.ts fhir | service <fhirBaseUrl> <secret> | bare\n');
  process.exit(2);
}
