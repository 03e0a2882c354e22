import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { Bundle, Encounter } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';

/**
 * A patient with more results than one page: retrieval must read all of them, whether or not the
 * server puts `next` links on the searches inside a batch (some servers leave them out).
 */
describe('retrieval of a long record through batch searches', () => {
  let sandbox: SandboxEhr;
  let server: Server;
  let baseUrl: string;
  let stripBatchLinks = false;
  const [longHistory] = generatePatients({ count: 1, seed: 20261127 });
  const expected = (type: string) =>
    longHistory.resources.filter((resource) => resource.resourceType === type).length;
  const encounter = longHistory.resources.find(
    (resource): resource is Encounter =>
      resource.resourceType === 'Encounter' && resource.status === 'finished',
  )!;

  beforeAll(async () => {
    sandbox = createSandboxEhr();
    await sandbox.seed(longHistory.resources);
    const app = express();
    app.post(
      '/fhir',
      express.json({ type: ['application/fhir+json', 'application/json'], limit: '5mb' }),
      async (request, response, next) => {
        if (!stripBatchLinks) return next();
        const result = await sandbox.handle({
          method: 'POST',
          url: '',
          headers: request.headers,
          body: request.body,
          baseUrl,
        });
        for (const entry of (result.body as Bundle).entry ?? [])
          delete (entry.resource as Bundle | undefined)?.link;
        response.status(result.status).type('application/fhir+json').send(JSON.stringify(result.body));
      },
    );
    app.use('/fhir', sandboxRouter(sandbox));
    server = await new Promise((resolve) => {
      const started = app.listen(0, '127.0.0.1', () => resolve(started));
    });
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
    sandbox.setBaseUrl(baseUrl);
  });
  afterAll(async () => {
    await new Promise((resolve) => server.close(resolve));
    await sandbox.close();
  });

  it.each([
    ['with next links on batch results', false],
    ['when the server leaves them out', true],
  ])('reads every observation and note %s', async (_label, strip) => {
    stripBatchLinks = strip;
    expect(expected('Observation')).toBeGreaterThan(200);
    const record = await retrievePatientRecord(new FhirClient({ baseUrl }), encounter, {
      draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
    });
    expect(record.observations).toHaveLength(expected('Observation'));
    expect(record.noteResources).toHaveLength(expected('DocumentReference'));
    expect(record.notes.length).toBeGreaterThan(300);
    expect(record.encounters).toHaveLength(expected('Encounter'));
  });
});
