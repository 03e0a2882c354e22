import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { MemoryRepository } from '@medplum/fhir-router';
import express from 'express';
import type { CapabilityStatement } from 'fhir/r4.js';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';

/**
 * The FHIR server for the fhir/ and drafts/ tests: the project's sandbox EHR (Medplum's router over an
 * in-memory repository, with real-server behaviour: absolute paging links, ETags, raw Binary reads)
 * mounted in express on an ephemeral port, counting every request it answers. Batch support in the
 * CapabilityStatement can be switched off to exercise the client's fallback.
 */
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
  const sandbox = createSandboxEhr();
  const requests: FhirTestServer['requests'] = [];
  let batch = options.batch ?? true;
  const app = express();
  app.use('/fhir', (request, response, next) => {
    requests.push({
      method: request.method,
      url: request.url.replace(/^\//, ''),
      ...(request.headers.authorization ? { authorization: request.headers.authorization } : {}),
    });
    if (batch || request.method !== 'GET' || request.path !== '/metadata') return next();
    const statement: CapabilityStatement = {
      resourceType: 'CapabilityStatement',
      status: 'active',
      date: '2026-11-27',
      kind: 'instance',
      fhirVersion: '4.0.1',
      format: ['json'],
      rest: [{ mode: 'server', interaction: [{ code: 'transaction' }] }],
    };
    response.status(200).type('application/fhir+json').send(JSON.stringify(statement));
  });
  app.use('/fhir', sandboxRouter(sandbox));
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const { port } = server.address() as AddressInfo;
  const baseUrl = `http://127.0.0.1:${port}/fhir`;
  sandbox.setBaseUrl(baseUrl);
  return {
    baseUrl,
    repository: sandbox.repository as unknown as MemoryRepository,
    requests,
    setBatch(enabled) {
      batch = enabled;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await sandbox.close();
    },
  };
}
