import type { AddressInfo } from 'node:net';
import express from 'express';
import { sandboxAuthorizationRouter } from '../../src/http/sandbox-authorization-routes.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import type { SandboxAuthorizationServer } from '../../src/sandbox/authorization/authorization-server.ts';
import { attachSandboxAuthorization } from '../../src/sandbox/authorization/sandbox-authorization.ts';
import { createSandboxEhr, type SandboxEhr, type SandboxEhrOptions } from '../../src/sandbox/sandbox-ehr.ts';

/**
 * The sandbox EHR with its SMART authorization server, over real HTTP, mounted where the service mounts them
 * (`/sandbox/fhir`, `/sandbox/auth`), with extra routes (a client's JWKS, say) on the same origin.
 */
export interface AuthorizedSandbox {
  origin: string;
  fhirBaseUrl: string;
  sandbox: SandboxEhr;
  authorization: SandboxAuthorizationServer;
  app: express.Express;
  close(): Promise<void>;
}

export async function startAuthorizedSandbox(options: SandboxEhrOptions = {}): Promise<AuthorizedSandbox> {
  const sandbox = createSandboxEhr(options);
  const app = express();
  const mounted = express.Router();
  app.use(mounted);
  const server = await new Promise<ReturnType<typeof app.listen>>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const fhirBaseUrl = `${origin}/sandbox/fhir`;
  sandbox.setBaseUrl(fhirBaseUrl);
  const authorization = await attachSandboxAuthorization(sandbox, { issuer: `${origin}/sandbox/auth` });
  mounted.use('/sandbox/fhir', sandboxRouter(sandbox));
  mounted.use('/sandbox/auth', sandboxAuthorizationRouter(authorization));
  return {
    origin,
    fhirBaseUrl,
    sandbox,
    authorization,
    app,
    async close() {
      await sandbox.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}
