import { timingSafeEqual } from 'node:crypto';
import express, { type Request, Router } from 'express';
import { outcome, outcomeError } from '../../fhir/operation-outcome.ts';
import { parseNotification } from '../../fhir/subscription-notification.ts';
import type { Logger } from '../log.ts';
import type { EncounterJobInput, JobQueue } from '../queue/job-queue.ts';

/**
 * POST /notify: a FHIR Subscriptions Backport (R4) notification. Validated, recorded in the durable
 * queue, answered 200 - before any FHIR call or drafting. Nothing is queued for a bad request.
 */
export interface NotifyRouteOptions {
  queue: JobQueue;
  logger: Logger;
  secret: string | undefined;
  maxBodyBytes: number;
  /** Called after jobs were queued, so idle workers start at once. */
  onQueued?: (added: number) => void;
}

const fhirJsonTypes = ['application/fhir+json', 'application/json', 'application/json+fhir'];

function sameSecret(given: string, expected: string): boolean {
  const left = Buffer.from(given);
  const right = Buffer.from(expected);
  return left.length === right.length && timingSafeEqual(left, right);
}

export function checkBearer(request: Request, secret: string | undefined): void {
  if (!secret) return;
  const header = request.get('authorization') ?? '';
  const token = /^Bearer\s+(.+)$/i.exec(header)?.[1]?.trim();
  if (!token || !sameSecret(token, secret))
    throw outcomeError('security', 'missing or wrong bearer secret', 401);
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

export function notifyRouter(options: NotifyRouteOptions): Router {
  const router = Router();
  const rawJson = express.raw({ type: () => true, limit: options.maxBodyBytes });

  router.post(
    '/notify',
    (request, _response, next) => {
      // Authenticate before reading the body, so an unauthenticated caller cannot make us parse megabytes.
      checkBearer(request, options.secret);
      const type = (request.get('content-type') ?? '').split(';')[0].trim().toLowerCase();
      if (!fhirJsonTypes.includes(type)) {
        throw outcomeError(
          'not-supported',
          `content type must be application/fhir+json, not ${type || 'missing'}`,
          415,
        );
      }
      next();
    },
    rawJson,
    async (request, response) => {
      const notification = parseNotification(parseJsonBody(request.body));
      const jobs: EncounterJobInput[] = [];
      for (const event of notification.events) {
        if (!event.focus?.startsWith('Encounter/')) continue;
        const versionId = (event.resource as { meta?: { versionId?: string } } | undefined)?.meta?.versionId;
        jobs.push({
          encounterId: event.focus.slice('Encounter/'.length),
          source: 'backport-rest-hook',
          ...(versionId ? { versionId } : {}),
        });
      }
      const { added } =
        notification.type === 'event-notification' ? await options.queue.enqueue(jobs) : { added: 0 };
      options.logger.info(
        {
          subscription: notification.subscription,
          type: notification.type,
          events: notification.events.length,
          queued: added,
        },
        'notification-received',
      );
      if (added > 0) options.onQueued?.(added);
      response
        .status(200)
        .type('application/fhir+json')
        .json(outcome('informational', `accepted; ${added} job(s) queued`, 'information'));
    },
  );
  return router;
}
