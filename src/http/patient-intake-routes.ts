import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import express, { type Request, type Response, type Router } from 'express';
import { RateLimiter } from '../intake/rate-limiter.ts';
import type { Logger } from '../log.ts';
import type { IntakePage, PatientIntake } from '../patient-intake/patient-intake-service.ts';
import { renderIntakePage } from './patient-intake-page/render.ts';

/**
 * The patient's interview over HTTP: `GET /intake/<token>` opens it, `POST /intake/<token>` sends a page of
 * answers (a plain urlencoded form, small). Rate limited per link and per client address. The token never
 * reaches a log line (only a short hash of it, to tell links apart), pages are never cached, and the Referrer
 * policy keeps the link out of any other site's logs.
 */
export interface PatientIntakeRouteOptions {
  intake: PatientIntake;
  logger: Logger;
  rateLimit: { perLinkPerMinute: number; perAddressPerMinute: number };
  now?: () => number;
}

const stylesheet = readFileSync(new URL('./patient-intake-page/intake.css', import.meta.url), 'utf8');
const securityHeaders = {
  'Content-Security-Policy':
    "default-src 'none'; style-src 'self'; img-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'",
  'Referrer-Policy': 'no-referrer',
  'X-Content-Type-Options': 'nosniff',
  'Cache-Control': 'no-store',
};

/** Long enough for a link and its interview state, far below anything that could hurt. */
const maxFormBytes = 65_536;

function linkKey(token: string): string {
  return createHash('sha256').update(token).digest('base64url').slice(0, 12);
}

export function patientIntakeRouter(options: PatientIntakeRouteOptions): Router {
  const router = express.Router();
  const perLink = new RateLimiter(options.rateLimit.perLinkPerMinute, { now: options.now });
  const perAddress = new RateLimiter(options.rateLimit.perAddressPerMinute, { now: options.now });
  const language = options.intake.questionnaires.defaultLanguage;

  /** Refused links answer like a missing or gone page; a rate limit as 429; anything else 200. */
  function statusOf(page: IntakePage | { kind: 'rate-limited' }): number {
    if (page.kind === 'rate-limited') return 429;
    if (page.kind !== 'problem') return 200;
    return page.problem === 'forged' ? 404 : page.problem === 'unavailable' ? 503 : 410;
  }

  function send(
    response: Response,
    page: IntakePage | { kind: 'rate-limited'; language: string },
    action: string,
  ) {
    if (page.kind === 'rate-limited') response.set('Retry-After', '60');
    response.status(statusOf(page)).set(securityHeaders).type('html').send(renderIntakePage(page, action));
  }

  /** Both limits spend a token; either empty refuses the request. */
  function limited(request: Request, key: string): boolean {
    const address = request.ip ?? 'unknown';
    const addressAllowed = perAddress.take(address);
    const linkAllowed = perLink.take(key);
    return !(addressAllowed && linkAllowed);
  }

  async function handle(request: Request, response: Response, work: (token: string) => Promise<IntakePage>) {
    const token = String(request.params.token ?? '');
    const key = linkKey(token);
    const action = `/intake/${encodeURIComponent(token)}`;
    if (limited(request, key)) {
      options.logger.warn({ link: key }, 'intake-rate-limited');
      send(response, { kind: 'rate-limited', language }, action);
      return;
    }
    try {
      const page = await work(token);
      if (page.kind === 'problem')
        options.logger.info({ link: key, problem: page.problem }, 'intake-link-refused');
      send(response, page, action);
    } catch (error) {
      // Never the error's text (it may quote the record) nor the path (it holds the token).
      options.logger.error({ link: key, error: (error as Error).name }, 'intake-page-failed');
      send(response, { kind: 'problem', problem: 'unavailable', language }, action);
    }
  }

  router.get('/intake-assets/intake.css', (_request, response) => {
    response
      .set({ 'X-Content-Type-Options': 'nosniff', 'Cache-Control': 'public, max-age=3600' })
      .type('css')
      .send(stylesheet);
  });
  router.get('/intake/:token', (request, response) =>
    handle(request, response, (token) => options.intake.start(token)),
  );
  router.post(
    '/intake/:token',
    express.urlencoded({ extended: false, limit: maxFormBytes, parameterLimit: 100 }),
    (request, response) =>
      handle(request, response, (token) =>
        options.intake.submit(token, (request.body ?? {}) as Record<string, unknown>),
      ),
  );
  // A body too large or malformed: a plain page, not the FHIR error of the API routes.
  router.use(
    '/intake',
    (error: unknown, _request: Request, response: Response, next: (error?: unknown) => void) => {
      if (!error) return next();
      response
        .status(413)
        .set(securityHeaders)
        .type('html')
        .send(renderIntakePage({ kind: 'problem', problem: 'unavailable', language }, '/'));
    },
  );
  return router;
}
