import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { MemoryRepository } from '@medplum/fhir-router';
import express from 'express';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import type { SandboxAuthorizationServer } from '../../src/sandbox/authorization/authorization-server.ts';
import type { TokenAccess } from '../../src/sandbox/authorization/scope-enforcement.ts';
import { createSandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import type { FhirTestServer } from '../fhir/fhir-test-server.ts';

/**
 * The sandbox EHR on an ephemeral port, accepting exactly the bearer tokens named here, so a test can tell
 * which token each request carried (the service's or the clinician's) while the sandbox still checks every
 * token and its scopes as it does for tokens from its own authorization server.
 */
export async function startSandboxWithTokens(tokens: Record<string, TokenAccess>): Promise<FhirTestServer> {
  const sandbox = createSandboxEhr();
  const accepting: Pick<SandboxAuthorizationServer, 'verifyAccessToken'> = {
    verifyAccessToken: async (token) => (Object.hasOwn(tokens, token) ? tokens[token] : undefined),
  };
  // Only token checks reach this stand-in: the sandbox asks nothing else of its authorization server for FHIR.
  sandbox.attachAuthorization(accepting as SandboxAuthorizationServer);
  const requests: FhirTestServer['requests'] = [];
  const app = express();
  app.use('/fhir', (request, _response, next) => {
    requests.push({
      method: request.method,
      url: request.url.replace(/^\//, ''),
      ...(request.headers.authorization ? { authorization: request.headers.authorization } : {}),
    });
    next();
  });
  app.use('/fhir', sandboxRouter(sandbox));
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(baseUrl);
  return {
    baseUrl,
    repository: sandbox.repository as unknown as MemoryRepository,
    requests,
    setBatch() {
      throw new Error('this sandbox always offers batch');
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await sandbox.close();
    },
  };
}
