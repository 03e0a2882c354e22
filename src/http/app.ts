import express, { type Express, type Router } from 'express';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import type { TrustProxySetting } from '../config/http-config.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { JobQueue, JobStatus } from '../queue/job-queue.ts';
import { notFoundHandler, operationOutcomeErrorHandler } from './errors.ts';
import { adminBearerRequired, hasBearer, type NotifyRouteOptions, notifyRouter } from './notify-routes.ts';

/**
 * The HTTP surface: event intake, health, job listing, and whatever routers the composition root
 * mounts (sandbox EHR, SMART launch, review app, CDS Hooks). The only module family that knows express.
 */
export interface AppOptions {
  queue: JobQueue;
  logger: Logger;
  /** Bearer secret /notify requires; there is no open mode. */
  notifySecret: string;
  maxBodyBytes: number;
  /** Readiness: false until start-up finished and while shutting down. */
  isReady: () => boolean;
  /** A reason the started service is not ready (its token refused, the token endpoint awaited): 503 naming it. */
  notReadyReason?: () => string | undefined;
  /** Details /readyz adds without changing readiness (the Subscription and whether it delivers). */
  readinessDetails?: () => Record<string, unknown>;
  onQueued?: (added: number) => void;
  /** Bearer secret for the operator APIs (job listing, dead-letter retry); there is no open mode. */
  adminSecret: string;
  routers?: { path: string; router: Router }[];
  /** Prometheus metrics; GET /metrics serves them when given. */
  metrics?: ServiceMetrics;
  /** Which proxies may name the client in X-Forwarded-For (`http.trustProxy`); default none. */
  trustProxy?: TrustProxySetting;
  /** Intake wiring for /notify (event intake, sources, Medplum secrets, rate limits). */
  notify?: Pick<NotifyRouteOptions, 'intake' | 'sources' | 'medplumSecrets' | 'rateLimit' | 'rateLimits'>;
}

const jobStatuses: JobStatus[] = ['pending', 'running', 'done', 'failed'];

/** The app, plus a way to mount routers that can only be built once the server listens (they need its URL). */
export type ServiceApp = Express & { mount(path: string, router: Router): void };

export function createApp(options: AppOptions): ServiceApp {
  const app = express();
  app.disable('x-powered-by');
  // The socket's peer is the client unless configured otherwise: a forwarded-for header is believed only from named proxies.
  app.set('trust proxy', options.trustProxy ?? false);

  app.get('/healthz', (_request, response) => {
    response.json({ status: 'ok' });
  });
  // Probes need only the status code; the why (queue depth, the FHIR base, the Subscription) is for operators.
  app.get('/readyz', async (request, response) => {
    const reason = options.notReadyReason?.();
    const ready = options.isReady() && !reason;
    const status = ready ? 'ready' : reason ? 'not-ready' : 'starting-or-stopping';
    if (!hasBearer(request, options.adminSecret)) {
      response.status(ready ? 200 : 503).json({ status });
      return;
    }
    const counts = ready ? await options.queue.counts() : undefined;
    response.status(ready ? 200 : 503).json({
      status,
      ...(reason ? { reason } : {}),
      queue: counts,
      ...options.readinessDetails?.(),
    });
  });

  app.use(
    notifyRouter({
      queue: options.queue,
      logger: options.logger,
      secret: options.notifySecret,
      maxBodyBytes: options.maxBodyBytes,
      onQueued: options.onQueued,
      metrics: options.metrics,
      ...options.notify,
    }),
  );

  const metrics = options.metrics;
  if (metrics) {
    // Operational detail (rule ids, queue depth, subscription outcomes): the admin bearer, like the job API.
    app.get('/metrics', adminBearerRequired(options.adminSecret), async (_request, response) => {
      response.type(metrics.registry.contentType).send(await metrics.registry.metrics());
    });
  }

  // Job listing and dead-letter retry, for operators: the admin secret, compared in constant time.
  const jobs = express.Router();
  jobs.use(adminBearerRequired(options.adminSecret));
  jobs.get('/', async (request, response) => {
    const status = String(request.query.status ?? 'failed') as JobStatus;
    if (!jobStatuses.includes(status))
      throw outcomeError('invalid', `status must be one of ${jobStatuses.join(', ')}`, 400);
    const limit = Math.min(500, Math.max(1, Number(request.query.limit ?? 100) || 100));
    response.json({
      status,
      jobs: await options.queue.list(status, limit),
      counts: await options.queue.counts(),
    });
  });
  jobs.post('/:id/retry', async (request, response) => {
    if (!(await options.queue.retry(request.params.id)))
      throw outcomeError('not-found', 'no failed job with that id', 404);
    options.onQueued?.(1);
    response.json({ retried: request.params.id });
  });
  app.use('/api/jobs', jobs);

  // One router holds every mounted part, so parts mounted after start still come before the 404 handler.
  const mounted = express.Router();
  for (const { path, router } of options.routers ?? []) mounted.use(path, router);
  app.use(mounted);

  app.use(notFoundHandler);
  app.use(operationOutcomeErrorHandler(options.logger));
  return Object.assign(app, { mount: (path: string, router: Router) => void mounted.use(path, router) });
}
