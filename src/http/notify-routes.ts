import { timingSafeEqual } from 'node:crypto';
import express, { type NextFunction, type Request, type Response, Router } from 'express';
import { isFhirId } from '../../fhir/fhir-id.ts';
import { OperationOutcomeError, outcome, outcomeError } from '../../fhir/operation-outcome.ts';
import { parseNotification } from '../../fhir/subscription-notification.ts';
import { EventIntake } from '../intake/event-intake.ts';
import { verifyMedplumSignature } from '../intake/medplum-signature.ts';
import { type ClientRateLimit, processRateLimit } from '../intake/rate-limiter.ts';
import type { Logger } from '../log.ts';
import type { ServiceMetrics } from '../metrics.ts';
import type { JobQueue } from '../queue/job-queue.ts';
import { bodyReadFailure } from './errors.ts';

/**
 * The notification endpoint, for every push source real servers use:
 * - POST /notify with a Backport IG (R4) notification Bundle (handshake, heartbeat, event-notification);
 * - POST /notify with an empty body (HAPI classic rest-hook without payload): a reconcile request;
 * - PUT or POST /notify/Encounter/<id> with the resource (HAPI classic rest-hook with payload);
 * - POST /notify with the bare resource and X-Signature (Medplum; `{}` for a delete).
 * Appointments arrive the same ways (PUT /notify/Appointment/<id>, a Backport focus, Medplum's bare
 * resource) and go to the pre-visit intake's invitations, when it is on.
 * A bearer secret or a valid HMAC is required before anything is read or fetched; failed
 * authentications and empty-payload floods are rate limited per client (the socket's address, unless
 * `http.trustProxy` names the proxies in front). Everything is recorded in the durable queue and
 * answered 200 before any FHIR call.
 */
export interface NotifyRouteOptions {
  /** The intake; built from `queue` when absent (foundation wiring). */
  intake?: EventIntake;
  queue?: JobQueue;
  logger: Logger;
  secret: string | undefined;
  maxBodyBytes: number;
  onQueued?: (added: number) => void;
  metrics?: ServiceMetrics;
  sources?: { backport: boolean; classic: boolean; medplum: boolean };
  medplumSecrets?: Record<string, string>;
  rateLimit?: { unauthenticatedPerMinute: number; emptyPayloadPerMinute: number };
  /** Where the rate limits' buckets live (the shared database with replicas); absent: in this process. */
  rateLimits?: { unauthenticated: ClientRateLimit; emptyPayloads: ClientRateLimit };
}

const fhirJsonTypes = ['application/fhir+json', 'application/json', 'application/json+fhir'];

function sameSecret(given: string, expected: string): boolean {
  const left = Buffer.from(given);
  const right = Buffer.from(expected);
  return left.length === right.length && timingSafeEqual(left, right);
}

export function hasBearer(request: Request, secret: string | undefined): boolean {
  // No secret configured is a wiring mistake, never an open door.
  if (!secret) return false;
  const header = request.get('authorization') ?? '';
  const token = /^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim();
  return token !== undefined && sameSecret(token, secret);
}

export function checkBearer(request: Request, secret: string | undefined): void {
  if (!hasBearer(request, secret)) throw outcomeError('security', 'missing or wrong bearer secret', 401);
}

/** Middleware for operator APIs (jobs, rules): the admin bearer, compared in constant time. */
export function adminBearerRequired(adminSecret: string) {
  return (request: Request, _response: Response, next: NextFunction) => {
    checkBearer(request, adminSecret);
    next();
  };
}

/** Parses a raw JSON body, tolerating the UTF-8 byte order mark some servers send. */
export function parseJsonBody(raw: unknown): unknown {
  if (!Buffer.isBuffer(raw) || raw.length === 0)
    throw outcomeError('structure', 'request body is empty', 400);
  const text = raw.toString('utf8').replace(/^\uFEFF/, '');
  try {
    return JSON.parse(text);
  } catch {
    throw outcomeError('structure', 'request body is not valid JSON', 400);
  }
}

function hasNoBody(request: Request): boolean {
  return !request.headers['transfer-encoding'] && (request.headers['content-length'] ?? '0') === '0';
}

function accepted(response: Response, message: string): void {
  // Written directly (no ETag, no content negotiation): this answer is on the hot path of every event.
  response.statusCode = 200;
  response.setHeader('content-type', 'application/fhir+json; charset=utf-8');
  response.end(JSON.stringify(outcome('informational', message, 'information')));
}

function tooMany(retryAfterSeconds: number, what: string): OperationOutcomeError {
  return new OperationOutcomeError(outcome('throttled', `too many ${what}; slow down`), {
    status: 429,
    retryAfterSeconds,
  });
}

export function notifyRouter(options: NotifyRouteOptions): Router {
  const router = Router();
  const sources = options.sources ?? { backport: true, classic: true, medplum: true };
  const medplumSecrets = options.medplumSecrets ?? {};
  const metrics = options.metrics;
  const intake =
    options.intake ??
    new EventIntake({
      queue: options.queue as JobQueue,
      logger: options.logger,
      metrics,
      onQueued: options.onQueued,
    });
  const unauthenticated =
    options.rateLimits?.unauthenticated ??
    processRateLimit(options.rateLimit?.unauthenticatedPerMinute ?? 30);
  const emptyPayloads =
    options.rateLimits?.emptyPayloads ?? processRateLimit(options.rateLimit?.emptyPayloadPerMinute ?? 120);
  const rawBody = express.raw({ type: () => true, limit: options.maxBodyBytes });
  const clientOf = (request: Request) => request.ip ?? request.socket.remoteAddress ?? 'unknown';

  /**
   * A request that did not prove where it comes from spends one of its client's tokens; with none left
   * the answer is 429, before any body is read on the bearer paths. Only failures are counted and
   * checked: valid credentials are never refused, so a flood from a shared address cannot lock out
   * the real server behind it.
   */
  const refuse = async (
    request: Request,
    response: Response,
    reason: string,
    failure?: OperationOutcomeError,
  ): Promise<never> => {
    const token = await unauthenticated.take(clientOf(request));
    if (!token.allowed) {
      metrics?.notificationsRejected.inc({ reason: 'rate-limited' });
      const error = tooMany(token.retryAfterSeconds, 'failed authentications');
      response.set('Retry-After', String(error.retryAfterSeconds));
      throw error;
    }
    metrics?.notificationsRejected.inc({ reason });
    throw (
      failure ??
      outcomeError(
        'security',
        reason === 'bad-signature' ? 'invalid X-Signature' : 'missing or wrong bearer secret',
        401,
      )
    );
  };

  const bearerRequired = async (request: Request, response: Response, next: NextFunction) => {
    if (!hasBearer(request, options.secret)) await refuse(request, response, 'unauthenticated');
    next();
  };

  /** The raw body on the signature path, where nothing is proven yet: a failed read counts as a failed authentication. */
  const signedBody = async (request: Request, response: Response): Promise<Buffer> => {
    try {
      await new Promise<void>((resolve, reject) =>
        rawBody(request, response, (error?: unknown) => (error ? reject(error) : resolve())),
      );
    } catch (error) {
      const failure = bodyReadFailure(error);
      if (!failure) throw error;
      await refuse(request, response, 'unreadable-body', failure.error);
    }
    return Buffer.isBuffer(request.body) ? request.body : Buffer.alloc(0);
  };

  const jsonContentType = (request: Request) => {
    const type = (request.get('content-type') ?? '').split(';')[0].trim().toLowerCase();
    if (!fhirJsonTypes.includes(type)) {
      throw outcomeError(
        'not-supported',
        `content type must be application/fhir+json, not ${type || 'missing'}`,
        415,
      );
    }
  };

  const takeEmptyPayload = async (request: Request, response: Response) => {
    const token = await emptyPayloads.take(clientOf(request));
    if (!token.allowed) {
      metrics?.notificationsRejected.inc({ reason: 'rate-limited' });
      const error = tooMany(token.retryAfterSeconds, 'empty notifications');
      response.set('Retry-After', String(error.retryAfterSeconds));
      throw error;
    }
  };

  /** An Encounter or Appointment from a classic rest-hook or Medplum body, checked against the id in the path. */
  const resourceFrom = (
    body: unknown,
    type: 'Encounter' | 'Appointment',
    pathId?: string,
  ): { id: string; versionId?: string } => {
    const resource = body as { resourceType?: unknown; id?: unknown; meta?: { versionId?: unknown } };
    if (typeof resource !== 'object' || resource === null || resource.resourceType !== type)
      throw outcomeError('invalid', `expected an ${type} resource`, 422);
    const id = typeof resource.id === 'string' ? resource.id : pathId;
    if (!isFhirId(id)) throw outcomeError('invalid', `${type} has no valid id`, 422);
    if (pathId && id !== pathId) throw outcomeError('invalid', `${type} id does not match the URL`, 422);
    const versionId = resource.meta?.versionId;
    if (versionId !== undefined && !isFhirId(versionId))
      throw outcomeError('invalid', `${type} meta.versionId is not a FHIR id`, 422);
    return { id, ...(versionId ? { versionId } : {}) };
  };
  const encounterFrom = (body: unknown, pathId?: string) => {
    const { id, versionId } = resourceFrom(body, 'Encounter', pathId);
    return { encounterId: id, ...(versionId ? { versionId } : {}) };
  };
  const appointmentAccepted = (response: Response, taken: number) =>
    accepted(
      response,
      taken > 0 ? 'accepted; appointment handed to the intake' : 'accepted; Appointment ignored',
    );

  router.post('/notify', async (request, response, next) => {
    if (request.get('x-signature') === undefined) return next();
    if (!sources.medplum)
      await refuse(
        request,
        response,
        'source-off',
        outcomeError('not-supported', 'Medplum notifications are switched off', 404),
      );
    // Medplum: the signature covers the raw body, so read it (bounded) before checking.
    const raw = await signedBody(request, response);
    const subscriptionId = request.get('x-medplum-subscription') ?? undefined;
    if (!verifyMedplumSignature(raw, request.get('x-signature') ?? '', medplumSecrets, subscriptionId))
      await refuse(request, response, 'bad-signature');
    const body = raw.length === 0 ? {} : parseJsonBody(raw);
    const interaction = (request.get('x-medplum-interaction') ?? '').toLowerCase();
    const resourceType = (body as { resourceType?: unknown }).resourceType;
    if (interaction === 'delete' || resourceType === undefined) {
      // A deleted resource arrives as `{}`: nothing to draft; a waiting job will see the 410 itself.
      metrics?.eventsReceived.inc({ source: 'medplum', outcome: 'ignored' });
      return accepted(response, 'accepted; delete needs no work');
    }
    if (resourceType === 'Appointment')
      return appointmentAccepted(
        response,
        intake.acceptAppointments([resourceFrom(body, 'Appointment').id], 'medplum'),
      );
    if (resourceType !== 'Encounter') {
      metrics?.eventsReceived.inc({ source: 'medplum', outcome: 'ignored' });
      const named = typeof resourceType === 'string' && /^[A-Z][A-Za-z]{0,63}$/.test(resourceType);
      return accepted(response, `accepted; ${named ? resourceType : 'resource'} ignored`);
    }
    const added = await intake.acceptEncounters([encounterFrom(body)], 'medplum');
    accepted(response, `accepted; ${added} job(s) queued`);
  });

  router.post('/notify', bearerRequired, async (request, response, next) => {
    if (!hasNoBody(request)) return next();
    // HAPI's rest-hook without payload: something changed, not what. The reconciler finds out.
    if (!sources.classic)
      throw outcomeError('not-supported', 'classic rest-hook notifications are switched off', 404);
    await takeEmptyPayload(request, response);
    intake.requestReconcile('empty-post', 'hapi');
    accepted(response, 'accepted; reconcile requested');
  });

  router.post(
    '/notify',
    (request, _response, next) => {
      jsonContentType(request);
      next();
    },
    rawBody,
    async (request, response) => {
      const body = parseJsonBody(request.body);
      const resourceType = (body as { resourceType?: unknown } | null)?.resourceType;
      if (resourceType === 'Encounter') {
        if (!sources.classic)
          throw outcomeError('not-supported', 'classic rest-hook notifications are switched off', 404);
        const added = await intake.acceptEncounters([encounterFrom(body)], 'classic');
        return accepted(response, `accepted; ${added} job(s) queued`);
      }
      if (resourceType === 'Appointment') {
        if (!sources.classic)
          throw outcomeError('not-supported', 'classic rest-hook notifications are switched off', 404);
        return appointmentAccepted(
          response,
          intake.acceptAppointments([resourceFrom(body, 'Appointment').id], 'classic'),
        );
      }
      if (!sources.backport)
        throw outcomeError('not-supported', 'Backport notifications are switched off', 404);
      const notification = parseNotification(body);
      if (notification.type === 'event-notification' && notification.events.some((event) => !event.focus))
        await takeEmptyPayload(request, response);
      const result = await intake.acceptNotification(notification, 'backport');
      accepted(
        response,
        `accepted; ${result.queued} job(s) queued${result.reconcileRequested ? ', reconcile requested' : ''}`,
      );
    },
  );

  const classicWithResource = [
    bearerRequired,
    async (request: Request, response: Response, next: NextFunction) => {
      if (!sources.classic)
        throw outcomeError('not-supported', 'classic rest-hook notifications are switched off', 404);
      if (hasNoBody(request)) {
        await takeEmptyPayload(request, response);
        return next();
      }
      jsonContentType(request);
      next();
    },
    rawBody,
    async (request: Request, response: Response) => {
      const pathId = String(request.params.id);
      if (!isFhirId(pathId)) throw outcomeError('invalid', 'not a FHIR id', 400);
      const event =
        Buffer.isBuffer(request.body) && request.body.length > 0
          ? encounterFrom(parseJsonBody(request.body), pathId)
          : { encounterId: pathId };
      const added = await intake.acceptEncounters([event], 'classic');
      accepted(response, `accepted; ${added} job(s) queued`);
    },
  ];
  router.put('/notify/Encounter/:id', ...classicWithResource);
  router.post('/notify/Encounter/:id', ...classicWithResource);
  // HAPI's classic rest-hook for `Appointment?...` criteria: the same shape, under the Appointment's path.
  const classicAppointment = [
    ...classicWithResource.slice(0, 3),
    async (request: Request, response: Response) => {
      const pathId = String(request.params.id);
      if (!isFhirId(pathId)) throw outcomeError('invalid', 'not a FHIR id', 400);
      const id =
        Buffer.isBuffer(request.body) && request.body.length > 0
          ? resourceFrom(parseJsonBody(request.body), 'Appointment', pathId).id
          : pathId;
      appointmentAccepted(response, intake.acceptAppointments([id], 'classic'));
    },
  ];
  router.put('/notify/Appointment/:id', ...classicAppointment);
  router.post('/notify/Appointment/:id', ...classicAppointment);
  for (const type of ['Encounter', 'Appointment'])
    router.delete(`/notify/${type}/:id`, bearerRequired, (_request, response) => {
      metrics?.eventsReceived.inc({ source: 'classic', outcome: 'ignored' });
      accepted(response, 'accepted; delete needs no work');
    });
  return router;
}
