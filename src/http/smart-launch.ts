import { randomBytes, timingSafeEqual } from 'node:crypto';
import path from 'node:path';
import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import { z } from 'zod';
import { normalizeOperationOutcome, OperationOutcomeError, outcome } from '../../fhir/operation-outcome.ts';
import type { JsonWebKeySet, SigningKey } from '../../fhir/signing-keys.ts';
import {
  beginLaunch,
  completeLaunch,
  findAllowedIssuer,
  type PendingLaunch,
  refreshLaunch,
} from '../../fhir/smart-app-launch.ts';
import { createClientAssertion } from '../../fhir/smart-backend-auth.ts';
import {
  discoverSmartConfiguration,
  type FetchFunction,
  type SmartConfiguration,
} from '../../fhir/smart-discovery.ts';
import type { SmartLaunchConfig } from '../config/auth-config.ts';
import type { Logger } from '../log.ts';
import { createSessionManager, MemorySessionStore, type SessionStore } from './session.ts';
import { SqliteSessionStore } from './sqlite-session-store.ts';

/**
 * The SMART App Launch routes (`/smart/launch`, `/smart/callback`) and the service's public JWKS
 * (`/.well-known/jwks.json`), plus what the review API needs from them: the launch context of a request and
 * its CSRF check. One browser session can hold several launch contexts (two EHR tabs, two patients); each has
 * its own id, passed to the review page as `?context=<id>` and sent back by its script as `X-Launch-Context`,
 * so a second launch never silently changes the patient under the first tab.
 */
export interface LaunchContext {
  /** Names this launch within the browser session (review URL `?context=`, header `X-Launch-Context`). */
  launchId: string;
  fhirBaseUrl: string;
  /** Patient id (as the server gave it, usually a bare id). */
  patient: string;
  encounter: string | undefined;
  /** Whether the EHR wants a patient banner shown (set on every launch; optional for hand-made contexts). */
  needPatientBanner?: boolean;
  /** The signed-in user (`Practitioner/123` or an absolute URL), from the verified id_token. */
  fhirUser: string | undefined;
  /** The user's FHIR token: server-side only, never sent to the browser. */
  accessToken: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
  scopes: string[];
  /** Sent back by the page as `X-CSRF-Token` on every state-changing call. */
  csrfToken: string;
}

export interface SmartSessionData {
  pendingLaunches: Record<string, PendingLaunch>;
  launches: Record<string, LaunchContext>;
  /** Refresh tokens by launch id (online_access/offline_access), kept apart so the API never sees them. */
  refreshGrants?: Record<string, { refreshToken: string; tokenEndpoint: string }>;
}

export interface SmartLaunchOptions {
  /** `auth.launch`; absent: the launch routes answer 404 and only the JWKS is served. */
  launch: SmartLaunchConfig | undefined;
  /** `publicUrl`, used for the default redirect URI `<publicUrl>/smart/callback`. */
  publicUrl?: string;
  /** The backend signing key's public JWKS (`accessTokenProvider.jwks`). */
  jwks?: JsonWebKeySet;
  /** Needed when `auth.launch.clientAuthentication` is private_key_jwt (`accessTokenProvider.signingKey`). */
  signingKey?: SigningKey;
  /** Overrides `auth.launch.sessionStore` (tests). */
  sessionStore?: SessionStore<SmartSessionData>;
  /** Where the sqlite session store keeps its file. */
  dataDir?: string;
  fetch?: FetchFunction;
  logger?: Logger;
  now?: () => number;
}

export interface SmartLaunch {
  router: Router;
  /** The launch context the request may act in, or undefined (no session, expired token, ambiguous context). */
  getLaunchContext(request: Request): Promise<LaunchContext | undefined>;
  /** Whether the request carries this context's CSRF token in `X-CSRF-Token` (compared in constant time). */
  verifyCsrfToken(request: Request, context: LaunchContext): boolean;
  /**
   * Middleware for the review API: 401 without a usable launch context, 403 when a state-changing method lacks
   * the CSRF token; otherwise `res.locals.launchContext` is set.
   */
  requireLaunchContext(): RequestHandler;
  /** Closes the session store's file, if any (graceful shutdown). */
  close(): void;
}

export const launchContextHeader = 'x-launch-context';
export const csrfHeader = 'x-csrf-token';

const pendingLaunchTtlSeconds = 600;
const maxPendingLaunches = 5;
const maxLaunchesPerSession = 10;

const launchQuerySchema = z.object({
  iss: z.url().max(2048).optional(),
  launch: z
    .string()
    .min(1)
    .max(2048)
    .regex(/^[\x21-\x7e]+$/)
    .optional(),
});

const callbackQuerySchema = z.object({
  state: z.string().max(512).optional(),
  code: z.string().min(1).max(4096).optional(),
  error: z.string().max(256).optional(),
  error_description: z.string().max(1024).optional(),
});

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);

/**
 * Errors are OperationOutcomes; a browser (the clinician in the EHR frame) gets the same diagnostic as a small
 * readable page instead of raw JSON.
 */
function sendOutcome(response: Response, error: OperationOutcomeError): void {
  response.status(error.status).set('cache-control', 'no-store');
  const request = response.req;
  if (
    request &&
    request.accepts(['application/fhir+json', 'application/json', 'text/html']) === 'text/html'
  ) {
    const diagnostics = escapeHtml(error.message);
    response
      .type('text/html')
      .send(
        `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Launch failed</title></head>` +
          `<body><main><h1>The review app could not start</h1><p role="alert">${diagnostics}</p>` +
          `<p>Close this panel and launch the app again from the patient's chart.</p></main></body></html>`,
      );
    return;
  }
  response.type('application/fhir+json').send(JSON.stringify(error.outcome));
}

const refused = (
  code: 'security' | 'login' | 'forbidden' | 'invalid' | 'not-found',
  diagnostics: string,
  status: number,
) => new OperationOutcomeError(outcome(code, diagnostics), { status });

function dropExpired(data: SmartSessionData, now: number): void {
  for (const [state, pending] of Object.entries(data.pendingLaunches)) {
    if (pending.createdAt + pendingLaunchTtlSeconds * 1000 <= now) delete data.pendingLaunches[state];
  }
  for (const [launchId, context] of Object.entries(data.launches)) {
    if (context.expiresAt <= now && !data.refreshGrants?.[launchId]) delete data.launches[launchId];
  }
  for (const launchId of Object.keys(data.refreshGrants ?? {})) {
    if (!Object.hasOwn(data.launches, launchId)) delete data.refreshGrants?.[launchId];
  }
}

/** Renew a little before expiry so a FHIR call made with the token does not meet an expired one. */
const refreshMarginMilliseconds = 60_000;

/** Keeps the newest `limit` entries of a record ordered by a timestamp. */
function keepNewest<T>(record: Record<string, T>, limit: number, timeOf: (value: T) => number): void {
  const entries = Object.entries(record).sort(([, a], [, b]) => timeOf(b) - timeOf(a));
  for (const [key] of entries.slice(limit)) delete record[key];
}

/** A session that only waits for a callback lives minutes; one holding a user's launch lives the configured time. */
function sessionTtlFor(data: SmartSessionData, sessionTtlSeconds: number): number {
  return Object.keys(data.launches).length > 0
    ? sessionTtlSeconds
    : Math.min(pendingLaunchTtlSeconds, sessionTtlSeconds);
}

function sameSecret(given: string, expected: string): boolean {
  const a = Buffer.from(given);
  const b = Buffer.from(expected);
  return a.length === b.length && timingSafeEqual(a, b);
}

export function createSmartLaunch(options: SmartLaunchOptions): SmartLaunch {
  const config = options.launch;
  const now = options.now ?? Date.now;
  let sqliteStore: SqliteSessionStore<SmartSessionData> | undefined;
  if (!options.sessionStore && config?.sessionStore === 'sqlite') {
    if (!options.dataDir) throw new Error('auth.launch.sessionStore sqlite needs the data directory');
    sqliteStore = new SqliteSessionStore(path.join(options.dataDir, 'smart-sessions.sqlite'), { now });
  }
  const sessionStore =
    options.sessionStore ?? sqliteStore ?? new MemorySessionStore<SmartSessionData>({ now });
  const sessions = createSessionManager<SmartSessionData>({
    store: sessionStore,
    cookie: config?.cookie ?? { secure: true, sameSite: 'none', partitioned: true },
  });
  const redirectUri =
    config?.redirectUri ??
    (options.publicUrl ? new URL('/smart/callback', options.publicUrl).href : undefined);
  if (config && !redirectUri) {
    throw new Error('auth.launch needs redirectUri, or publicUrl to derive <publicUrl>/smart/callback from');
  }
  if (config?.clientAuthentication === 'private_key_jwt' && !options.signingKey) {
    throw new Error(
      'auth.launch.clientAuthentication private_key_jwt needs auth.backend.mode smart-backend (its key)',
    );
  }
  const standaloneScopes =
    config?.standaloneScopes ??
    config?.scopes.map((scope) => (scope === 'launch' ? 'launch/patient' : scope)) ??
    [];

  // Every launch would otherwise fetch the EHR's smart-configuration: cache it briefly, per issuer.
  const discoveryCache = new Map<string, { configuration: SmartConfiguration; expiresAt: number }>();
  async function discover(fhirBaseUrl: string): Promise<SmartConfiguration> {
    const cached = discoveryCache.get(fhirBaseUrl);
    if (cached && cached.expiresAt > now()) return cached.configuration;
    const configuration = await discoverSmartConfiguration(fhirBaseUrl, {
      fetch: options.fetch,
      timeoutMs: config?.requestTimeoutMs,
    });
    const cacheSeconds = config?.discoveryCacheSeconds ?? 0;
    if (cacheSeconds > 0)
      discoveryCache.set(fhirBaseUrl, { configuration, expiresAt: now() + cacheSeconds * 1000 });
    return configuration;
  }

  const router = express.Router();

  router.get('/.well-known/jwks.json', (_request, response) => {
    if (!options.jwks) {
      sendOutcome(
        response,
        refused('not-found', 'this service signs no client assertions (auth.backend.mode)', 404),
      );
      return;
    }
    // Servers cache the JWKS; an hour lets a key added ahead of a rotation spread without hammering us.
    response
      .set('cache-control', 'public, max-age=3600')
      .type('application/json')
      .send(JSON.stringify(options.jwks));
  });

  router.get('/smart/launch', async (request, response) => {
    try {
      if (!config)
        throw refused('not-found', 'SMART launch is not configured on this service (auth.launch)', 404);
      const query = launchQuerySchema.safeParse(request.query);
      if (!query.success)
        throw refused('invalid', 'the launch request has an invalid iss or launch parameter', 400);
      const { iss, launch } = query.data;
      if (launch && !iss) throw refused('invalid', 'an EHR launch needs iss as well as launch', 400);
      // A standalone launch may omit iss when the service knows only one FHIR server.
      const requestedIssuer =
        iss ?? (config.allowedIssuers.length === 1 ? config.allowedIssuers[0] : undefined);
      if (!requestedIssuer) throw refused('invalid', 'which FHIR server? pass iss', 400);
      const allowedIssuer = findAllowedIssuer(requestedIssuer, config.allowedIssuers);
      // aud must be the iss exactly as the EHR sent it; servers compare the strings.
      const fhirBaseUrl = allowedIssuer && (iss ?? allowedIssuer);
      if (!fhirBaseUrl) {
        throw refused(
          'forbidden',
          `iss ${requestedIssuer} is not one of the FHIR servers this service is configured for`,
          403,
        );
      }
      const { authorizeUrl, pending } = await beginLaunch({
        fhirBaseUrl,
        launch,
        clientId: config.clientId,
        redirectUri: redirectUri as string,
        scopes: launch ? config.scopes : standaloneScopes,
        fetch: options.fetch,
        timeoutMs: config.requestTimeoutMs,
        now,
        discover,
      });
      const existing = await sessions.load(request);
      const data: SmartSessionData = existing?.data ?? { pendingLaunches: {}, launches: {} };
      dropExpired(data, now());
      data.pendingLaunches[pending.state] = pending;
      keepNewest(data.pendingLaunches, maxPendingLaunches, (value) => value.createdAt);
      await sessions.save(response, existing?.id, data, sessionTtlFor(data, config.sessionTtlSeconds));
      options.logger?.info({ standalone: pending.standalone }, 'smart launch redirected to authorize');
      response.set('cache-control', 'no-store').redirect(302, authorizeUrl);
    } catch (error) {
      const failure = normalizeOperationOutcome(error);
      options.logger?.warn({ status: failure.status, reason: failure.message }, 'smart launch refused');
      sendOutcome(response, failure);
    }
  });

  router.get('/smart/callback', async (request, response) => {
    try {
      if (!config)
        throw refused('not-found', 'SMART launch is not configured on this service (auth.launch)', 404);
      const query = callbackQuerySchema.safeParse(request.query);
      if (!query.success) throw refused('invalid', 'the callback has invalid parameters', 400);
      const session = await sessions.load(request);
      if (!session) {
        throw refused(
          'security',
          'no launch session arrived with the callback (session expired, or the browser blocked the session cookie)',
          401,
        );
      }
      dropExpired(session.data, now());
      const state = query.data.state;
      const pending =
        state && Object.hasOwn(session.data.pendingLaunches, state)
          ? session.data.pendingLaunches[state]
          : undefined;
      if (!state || !pending) {
        throw refused(
          'security',
          'the state parameter does not match a launch started in this browser session',
          401,
        );
      }
      // One use only: a replayed callback finds nothing.
      delete session.data.pendingLaunches[state];
      await sessions.save(
        response,
        session.id,
        session.data,
        sessionTtlFor(session.data, config.sessionTtlSeconds),
      );
      if (query.data.error) {
        const description = query.data.error_description ? `: ${query.data.error_description}` : '';
        throw refused(
          'security',
          `the authorization server refused the launch (${query.data.error}${description})`,
          401,
        );
      }
      if (!query.data.code) throw refused('invalid', 'the callback carries no code', 400);
      const signingKey = options.signingKey;
      const result = await completeLaunch(pending, {
        code: query.data.code,
        clientId: config.clientId,
        clientAssertion:
          config.clientAuthentication === 'private_key_jwt' && signingKey
            ? (tokenUrl) => createClientAssertion(signingKey, { clientId: config.clientId, tokenUrl, now })
            : undefined,
        fetch: options.fetch,
        timeoutMs: config.requestTimeoutMs,
        now,
      });
      const launchId = randomBytes(16).toString('base64url');
      const { refreshToken, tokenEndpoint, ...visible } = result;
      session.data.launches[launchId] = {
        launchId,
        ...visible,
        csrfToken: randomBytes(32).toString('base64url'),
      };
      if (refreshToken) {
        session.data.refreshGrants = {
          ...session.data.refreshGrants,
          [launchId]: { refreshToken, tokenEndpoint },
        };
      }
      keepNewest(session.data.launches, maxLaunchesPerSession, (value) => value.expiresAt);
      dropExpired(session.data, now());
      // A fresh session id now that the session carries a user's token (no fixation by a planted cookie).
      await sessions.rotate(response, session.id, session.data, config.sessionTtlSeconds);
      options.logger?.info({ standalone: pending.standalone }, 'smart launch completed');
      response
        .set('cache-control', 'no-store')
        .redirect(302, `${config.reviewPath}?context=${encodeURIComponent(launchId)}`);
    } catch (error) {
      const failure = normalizeOperationOutcome(error);
      options.logger?.warn({ status: failure.status, reason: failure.message }, 'smart callback refused');
      sendOutcome(response, failure);
    }
  });

  // One refresh per launch at a time in this process; concurrent API calls wait for the same one.
  const refreshesInFlight = new Map<string, Promise<LaunchContext | undefined>>();

  async function refresh(sessionId: string, launchId: string): Promise<LaunchContext | undefined> {
    const before = await sessions.loadById(sessionId);
    const grant = before?.data.refreshGrants?.[launchId];
    const context = before?.data.launches[launchId];
    if (!grant || !context || !config) return undefined;
    let renewed: Awaited<ReturnType<typeof refreshLaunch>> | undefined;
    try {
      const signingKey = options.signingKey;
      renewed = await refreshLaunch(
        { ...grant, patient: context.patient },
        {
          clientId: config.clientId,
          clientAssertion:
            config.clientAuthentication === 'private_key_jwt' && signingKey
              ? (tokenUrl) => createClientAssertion(signingKey, { clientId: config.clientId, tokenUrl, now })
              : undefined,
          fetch: options.fetch,
          timeoutMs: config.requestTimeoutMs,
          now,
        },
      );
    } catch (error) {
      options.logger?.warn(
        { reason: normalizeOperationOutcome(error).message },
        'smart token refresh failed',
      );
    }
    // Apply the outcome to the session as it is now, not as it was before the request.
    const latest = await sessions.loadById(sessionId);
    if (!latest?.data.launches[launchId]) return undefined;
    if (renewed) {
      const updated: LaunchContext = {
        ...latest.data.launches[launchId],
        accessToken: renewed.accessToken,
        expiresAt: renewed.expiresAt,
        scopes: renewed.scopes ?? latest.data.launches[launchId].scopes,
      };
      latest.data.launches[launchId] = updated;
      latest.data.refreshGrants = {
        ...latest.data.refreshGrants,
        [launchId]: { refreshToken: renewed.refreshToken, tokenEndpoint: grant.tokenEndpoint },
      };
      await sessions.update(sessionId, latest.data, config.sessionTtlSeconds);
      return updated;
    }
    delete latest.data.launches[launchId];
    delete latest.data.refreshGrants?.[launchId];
    await sessions.update(sessionId, latest.data, config.sessionTtlSeconds);
    return undefined;
  }

  async function getLaunchContext(request: Request): Promise<LaunchContext | undefined> {
    const session = await sessions.load(request);
    if (!session) return undefined;
    const current = now();
    const usable = Object.values(session.data.launches).filter(
      (context) => context.expiresAt > current || Boolean(session.data.refreshGrants?.[context.launchId]),
    );
    const headerValue = request.get(launchContextHeader);
    const queryValue = typeof request.query.context === 'string' ? request.query.context : undefined;
    const wanted = headerValue ?? queryValue;
    // Without an id, only an unambiguous session answers: never guess between two patients.
    const context = wanted
      ? usable.find((candidate) => candidate.launchId === wanted)
      : usable.length === 1
        ? usable[0]
        : undefined;
    if (!context) return undefined;
    if (context.expiresAt - refreshMarginMilliseconds > current) return context;
    if (!session.data.refreshGrants?.[context.launchId])
      return context.expiresAt > current ? context : undefined;
    const key = `${session.id} ${context.launchId}`;
    let inFlight = refreshesInFlight.get(key);
    if (!inFlight) {
      inFlight = refresh(session.id, context.launchId).finally(() => refreshesInFlight.delete(key));
      refreshesInFlight.set(key, inFlight);
    }
    return inFlight;
  }

  function verifyCsrfToken(request: Request, context: LaunchContext): boolean {
    const given = request.get(csrfHeader);
    return typeof given === 'string' && sameSecret(given, context.csrfToken);
  }

  function requireLaunchContext(): RequestHandler {
    return async (request, response, next) => {
      try {
        const context = await getLaunchContext(request);
        if (!context) {
          sendOutcome(
            response,
            refused('login', 'no SMART launch session: launch the app from the EHR', 401),
          );
          return;
        }
        const safeMethod =
          request.method === 'GET' || request.method === 'HEAD' || request.method === 'OPTIONS';
        if (!safeMethod && !verifyCsrfToken(request, context)) {
          sendOutcome(response, refused('forbidden', 'missing or wrong X-CSRF-Token', 403));
          return;
        }
        response.locals.launchContext = context;
        next();
      } catch (error) {
        next(error);
      }
    };
  }

  return {
    router,
    getLaunchContext,
    verifyCsrfToken,
    requireLaunchContext,
    close: () => sqliteStore?.close(),
  };
}
