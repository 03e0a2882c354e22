import express, { type Router } from 'express';
import type { SandboxAuthorizationServer } from '../sandbox/authorization/authorization-server.ts';

/**
 * Mounts the sandbox's SMART authorization server (oidc-provider, a Koa application, plus the sandbox's sign-in
 * step) on express, at the path of its issuer. Requests reach it unparsed: it reads its own form bodies.
 */
export function sandboxAuthorizationRouter(server: Pick<SandboxAuthorizationServer, 'handle'>): Router {
  const router = express.Router();
  router.use((request, response) => server.handle(request, response));
  return router;
}
