import { createHash } from 'node:crypto';
import { readFileSync } from 'node:fs';
import express, { type Request, type Response, type Router } from 'express';
import { type ClientRateLimit, RateLimiter } from '../intake/rate-limiter.ts';
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
  /**
   * Where the buckets live: the shared database with replicas (a link or an address has one budget whichever
   * replica the balancer picks), absent: this process.
   */
  rateLimits?: { perLink: ClientRateLimit; perAddress: ClientRateLimit };
  /** The standalone SMART launch's routes (`/intake/launch`, `/intake/callback`), mounted before `/intake/<token>`. */
  standaloneLaunch?: Router;
  now?: () => number;
}

function processLimit(perMinute: number, now: (() => number) | undefined): ClientRateLimit {
  const limiter = new RateLimiter(perMinute, { now });
  return {
    async take(client) {
      const allowed = limiter.take(client);
      return { allowed, retryAfterSeconds: allowed ? 0 : limiter.retryAfterSeconds(client) };
    },
  };
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
  const perLink =
    options.rateLimits?.perLink ?? processLimit(options.rateLimit.perLinkPerMinute, options.now);
  const perAddress =
    options.rateLimits?.perAddress ?? processLimit(options.rateLimit.perAddressPerMinute, options.now);
  const language = options.intake.questionnaires.defaultLanguage;

  /** Refused links answer like a missing or gone page; a rate limit as 429; anything else 200. */
  function statusOf(page: IntakePage | { kind: 'rate-limited' }): number {
    if (page.kind === 'rate-limited') return 429;
    if (page.kind !== 'problem') return 200;
    return page.problem === 'forged' ? 404 : page.problem === 'unavailable' ? 503 : 410;
  }

  function send(
    response: Response,
    page: IntakePage | { kind: 'rate-limited'; language: string; retryAfterSeconds: number },
    action: string,
  ) {
    if (page.kind === 'rate-limited') response.set('Retry-After', String(page.retryAfterSeconds));
    response.status(statusOf(page)).set(securityHeaders).type('html').send(renderIntakePage(page, action));
  }

  /** Both limits spend a token; either empty refuses the request (the answer: seconds to wait). */
  async function limited(request: Request, key: string): Promise<number | undefined> {
    const address = request.ip ?? 'unknown';
    const [byAddress, byLink] = await Promise.all([perAddress.take(address), perLink.take(key)]);
    if (byAddress.allowed && byLink.allowed) return undefined;
    return Math.max(
      byAddress.allowed ? 0 : byAddress.retryAfterSeconds,
      byLink.allowed ? 0 : byLink.retryAfterSeconds,
    );
  }

  async function handle(request: Request, response: Response, work: (token: string) => Promise<IntakePage>) {
    const token = String(request.params.token ?? '');
    const key = linkKey(token);
    const action = `/intake/${encodeURIComponent(token)}`;
    try {
      const retryAfterSeconds = await limited(request, key);
      if (retryAfterSeconds !== undefined) {
        options.logger.warn({ link: key }, 'intake-rate-limited');
        send(response, { kind: 'rate-limited', language, retryAfterSeconds }, action);
        return;
      }
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

  // The standalone launch fetches the issuer's SMART configuration and tokens: its requests spend the address's budget.
  if (options.standaloneLaunch) {
    const launchPaths = new Set(['/intake/launch', '/intake/callback']);
    router.use(async (request, response, next) => {
      if (!launchPaths.has(request.path)) return next();
      try {
        const taken = await perAddress.take(request.ip ?? 'unknown');
        if (taken.allowed) return next();
        options.logger.warn({}, 'intake-launch-rate-limited');
        send(
          response,
          { kind: 'rate-limited', language, retryAfterSeconds: taken.retryAfterSeconds },
          '/intake/launch',
        );
      } catch (error) {
        next(error);
      }
    });
    router.use(options.standaloneLaunch);
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
