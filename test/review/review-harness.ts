import { mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Router } from 'express';
import { createDraftLifecycle, type DraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { smartLaunchConfigSchema } from '../../src/config/auth-config.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { createApp } from '../../src/http/app.ts';
import { type DraftLifecyclePort, draftsApiRouter } from '../../src/http/drafts-api-routes.ts';
import { reviewAppRouters } from '../../src/http/review-app.ts';
import { reviewRouter } from '../../src/http/review-routes.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSmartLaunch, type LaunchContext } from '../../src/http/smart-launch.ts';
import { silentLogger } from '../../src/log.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import type { SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import {
  type SmartAuthorizationServer,
  type SmartAuthorizationServerOptions,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * The pieces of a clinician's review session over real HTTP: the strict test authorization server (in front of
 * a FHIR server), and the service's own HTTP app with the SMART launch, the review page and the drafts API
 * mounted the way the composition root mounts them. The clock the launch sessions see can be moved forward, to
 * expire a session without waiting.
 */
export const reviewClientId = 'review-app';
export const launchScopes =
  'launch openid fhirUser patient/*.rs patient/DocumentReference.u patient/Provenance.c';

export interface ReviewHarness {
  serviceUrl: string;
  auth: SmartAuthorizationServer;
  /** Milliseconds added to the launch sessions' clock. */
  clockOffset: { milliseconds: number };
  /** `/smart/launch?iss=...&launch=...` for a fresh EHR launch with this context. */
  launchUrl(context: { patient: string; encounter?: string; fhirUser?: string }): string;
  close(): Promise<void>;
}

export async function startReviewHarness(options: {
  /** The authorization server's options; a function receives the service URL (to proxy to its sandbox). */
  authorization: SmartAuthorizationServerOptions | ((serviceUrl: string) => SmartAuthorizationServerOptions);
  /** Either a stand-in lifecycle per launch, or the real lifecycle, mounted through reviewAppRouters. */
  lifecycleFor?: (context: LaunchContext) => DraftLifecyclePort;
  lifecycle?: Pick<DraftLifecycle, 'withClient'>;
  /**
   * production: the default cookie (`SameSite=None; Secure; Partitioned`, `__Host-` name), served on
   * http://localhost, which Chromium treats as a secure origin. Default: the documented local-development
   * setting on http://127.0.0.1.
   */
  cookie?: 'production' | 'local-development';
  /** CSP frame-ancestors of the review page (`review.frameAncestors`). */
  frameAncestors?: string[];
  /** Extra routers mounted on the service app (for example the sandbox EHR). */
  routers?: (serviceUrl: string) => { path: string; router: Router }[];
}): Promise<ReviewHarness> {
  const logger = silentLogger();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'review-e2e-'));
  const queue = new SqliteJobQueue(path.join(dataDir, 'queue.sqlite'), {
    maxAttempts: 3,
    backoffBaseMs: 1_000,
    backoffMaxMs: 10_000,
    leaseMs: 60_000,
  });
  // Listen first: the launch needs the service's own URL for its redirect URI.
  const server: Server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const production = options.cookie === 'production';
  const serviceUrl = `http://${production ? 'localhost' : '127.0.0.1'}:${(server.address() as AddressInfo).port}`;
  const auth = await startSmartAuthorizationServer(
    typeof options.authorization === 'function' ? options.authorization(serviceUrl) : options.authorization,
  );
  auth.registerClient({
    clientId: reviewClientId,
    allowedScopes: launchScopes.split(' '),
    redirectUris: [`${serviceUrl}/smart/callback`],
  });

  const clockOffset = { milliseconds: 0 };
  const smartLaunch = createSmartLaunch({
    launch: smartLaunchConfigSchema.parse({
      clientId: reviewClientId,
      allowedIssuers: [auth.fhirBaseUrl],
      scopes: launchScopes,
      // The documented local-development setting: plain http, so no Secure (and hence no SameSite=None).
      ...(production ? {} : { cookie: { secure: false, sameSite: 'lax', partitioned: false } }),
    }),
    publicUrl: serviceUrl,
    logger,
    now: () => Date.now() + clockOffset.milliseconds,
  });
  const app = createApp({
    queue,
    logger,
    notifySecret: 'review-harness-notify-secret',
    adminSecret: 'review-harness-admin-secret',
    maxBodyBytes: 1_048_576,
    isReady: () => true,
    routers: [
      { path: '/', router: smartLaunch.router },
      ...(options.lifecycle
        ? reviewAppRouters({
            smartLaunch,
            lifecycle: options.lifecycle,
            review: { frameAncestors: options.frameAncestors ?? ["'self'"] },
            logger,
          })
        : [
            { path: '/review', router: reviewRouter({ frameAncestors: options.frameAncestors }) },
            {
              path: '/api/drafts',
              router: draftsApiRouter({
                requireLaunchContext: smartLaunch.requireLaunchContext,
                lifecycleFor:
                  options.lifecycleFor ??
                  (() => {
                    throw new Error('the harness needs lifecycle or lifecycleFor');
                  }),
                logger,
              }),
            },
          ]),
      ...(options.routers?.(serviceUrl) ?? []),
    ],
  });
  server.on('request', app);

  return {
    serviceUrl,
    auth,
    clockOffset,
    launchUrl(context) {
      const launch = auth.createLaunch(context);
      return `${serviceUrl}/smart/launch?iss=${encodeURIComponent(auth.fhirBaseUrl)}&launch=${encodeURIComponent(launch)}`;
    },
    async close() {
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await auth.close();
      await queue.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

/**
 * The review app on the real draft lifecycle in write mode, with the sandbox EHR mounted at /sandbox/fhir behind
 * the test authorization server: the clinician's calls carry their token through it, and the service writes
 * drafts with its own client, as the pipeline does in sandbox mode.
 */
export async function startSandboxReviewHarness(
  sandbox: SandboxEhr,
  options: { identifierSystem: string; requestRegeneration?: (encounterId: string, kind: string) => void },
): Promise<{ harness: ReviewHarness; store: SqliteDraftStore; serviceClient: FhirClient }> {
  const store = new SqliteDraftStore(':memory:');
  // The lifecycle needs the service's own client, whose URL exists once the service listens.
  let lifecycle: DraftLifecycle | undefined;
  const harness = await startReviewHarness({
    authorization: (serviceUrl) => ({ fhirUpstream: `${serviceUrl}/sandbox/fhir` }),
    lifecycle: { withClient: (client) => (lifecycle as DraftLifecycle).withClient(client) },
    routers: () => [{ path: '/sandbox/fhir', router: sandboxRouter(sandbox) }],
  });
  const serviceClient = new FhirClient({ baseUrl: `${harness.serviceUrl}/sandbox/fhir` });
  lifecycle = createDraftLifecycle({
    mode: 'write',
    identifierSystem: options.identifierSystem,
    store,
    serviceClient,
    requestRegeneration: options.requestRegeneration ?? (() => undefined),
  });
  return { harness, store, serviceClient };
}
