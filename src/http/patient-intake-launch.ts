import express, { type Request, type Response, type Router } from 'express';
import { z } from 'zod';
import { FhirClient, staticAccessToken } from '../../fhir/fhir-client.ts';
import { isFhirId } from '../../fhir/fhir-id.ts';
import { normalizeOperationOutcome } from '../../fhir/operation-outcome.ts';
import {
  beginLaunch,
  completeLaunch,
  findAllowedIssuer,
  type PendingLaunch,
} from '../../fhir/smart-app-launch.ts';
import type { Logger } from '../log.ts';
import type { LinkSealer } from '../patient-intake/invitation-token.ts';
import { nextVisit } from '../patient-intake/next-visit.ts';
import type { PatientIntake } from '../patient-intake/patient-intake-service.ts';
import { renderIntakePage } from './patient-intake-page/render.ts';

/**
 * The intake as a standalone SMART patient app, for portals: `GET /intake/launch?iss=<FHIR base>` starts an
 * authorization-code launch with PKCE (`launch/patient` and `patient/` scopes), `GET /intake/callback` exchanges
 * the code; the patient's own token names the patient and finds their next booked visit, which gets a fresh
 * link, and the browser goes on to the interview. What must survive the round trip (state, PKCE verifier) is
 * sealed in a short-lived HttpOnly cookie, so no session is kept; the patient's token is used for those reads
 * and dropped.
 */
export interface PatientIntakeLaunchOptions {
  intake: PatientIntake;
  logger: Logger;
  clientId: string;
  allowedIssuers: string[];
  scopes: string[];
  redirectUri: string;
  /** Seals the pending launch into its cookie (its own purpose: never a link or an interview state). */
  sealer: LinkSealer;
  now?: () => number;
}

const cookieName = 'intake_launch';
const pendingLifetimeMs = 600_000;

const launchQuerySchema = z.object({
  iss: z
    .url({ protocol: /^https?$/ })
    .max(2048)
    .optional(),
});
const callbackQuerySchema = z.object({
  state: z.string().min(1).max(512),
  code: z.string().min(1).max(4096).optional(),
  error: z.string().max(256).optional(),
});
const pendingSchema = z.looseObject({
  state: z.string(),
  codeVerifier: z.string(),
  fhirBaseUrl: z.string(),
  tokenEndpoint: z.string(),
  redirectUri: z.string(),
  scopes: z.array(z.string()),
  createdAt: z.number(),
});

function cookieValue(request: Request, name: string): string | undefined {
  for (const part of (request.get('cookie') ?? '').split(';')) {
    const [key, ...rest] = part.trim().split('=');
    if (key === name) return rest.join('=');
  }
  return undefined;
}

export function patientIntakeLaunchRouter(options: PatientIntakeLaunchOptions): Router {
  const router = express.Router();
  const now = options.now ?? Date.now;
  const language = options.intake.questionnaires.defaultLanguage;
  const secure = new URL(options.redirectUri).protocol === 'https:';
  const cookieOptions = {
    httpOnly: true,
    // The callback is a top-level GET from the authorization server: Lax sends the cookie there, nowhere else.
    sameSite: 'lax' as const,
    secure,
    path: '/intake',
  };

  function problem(response: Response, status: number, kind: 'visit-closed' | 'unavailable' | 'forged') {
    response
      .status(status)
      .set({
        'Cache-Control': 'no-store',
        'Referrer-Policy': 'no-referrer',
        'X-Content-Type-Options': 'nosniff',
      })
      .type('html')
      .send(renderIntakePage({ kind: 'problem', problem: kind, language }, '/intake/launch'));
  }

  router.get('/intake/launch', async (request, response) => {
    const query = launchQuerySchema.safeParse(request.query);
    const requested = query.success
      ? (query.data.iss ?? (options.allowedIssuers.length === 1 ? options.allowedIssuers[0] : undefined))
      : undefined;
    const fhirBaseUrl = requested ? findAllowedIssuer(requested, options.allowedIssuers) : undefined;
    if (!fhirBaseUrl) {
      options.logger.warn({}, 'intake-launch-refused-issuer');
      return problem(response, 400, 'forged');
    }
    try {
      const { authorizeUrl, pending } = await beginLaunch({
        fhirBaseUrl: query.data?.iss ?? fhirBaseUrl,
        launch: undefined,
        clientId: options.clientId,
        redirectUri: options.redirectUri,
        scopes: options.scopes,
        now,
      });
      response
        .cookie(cookieName, options.sealer.seal(pending), { ...cookieOptions, maxAge: pendingLifetimeMs })
        .set('Cache-Control', 'no-store')
        .redirect(302, authorizeUrl);
    } catch (error) {
      options.logger.warn(
        { reason: normalizeOperationOutcome(error).message.slice(0, 200) },
        'intake-launch-failed',
      );
      problem(response, 502, 'unavailable');
    }
  });

  router.get('/intake/callback', async (request, response) => {
    response.clearCookie(cookieName, cookieOptions);
    const query = callbackQuerySchema.safeParse(request.query);
    const pending = pendingSchema.safeParse(options.sealer.open(cookieValue(request, cookieName) ?? ''));
    // The state must be the one this browser started with, and recent: a replayed or forged callback stops here.
    if (
      !query.success ||
      !pending.success ||
      pending.data.state !== query.data.state ||
      now() - pending.data.createdAt > pendingLifetimeMs
    ) {
      options.logger.warn({}, 'intake-callback-refused');
      return problem(response, 401, 'forged');
    }
    if (query.data.error || !query.data.code) {
      options.logger.info({ error: query.data.error?.slice(0, 64) }, 'intake-launch-declined');
      return problem(response, 401, 'unavailable');
    }
    try {
      const granted = await completeLaunch(pending.data as unknown as PendingLaunch, {
        code: query.data.code,
        clientId: options.clientId,
        now,
      });
      if (!isFhirId(granted.patient)) return problem(response, 401, 'forged');
      const patientFhir = new FhirClient({
        baseUrl: granted.fhirBaseUrl,
        accessToken: staticAccessToken(granted.accessToken),
        scopeContext: 'patient',
      });
      const visit = await nextVisit(patientFhir, granted.patient, new Date(now()));
      const link = visit && (await options.intake.linkForSignedInPatient(granted.patient, visit));
      if (!link) {
        options.logger.info({}, 'intake-launch-no-upcoming-visit');
        return problem(response, 404, 'visit-closed');
      }
      options.logger.info({ ...visit }, 'intake-launch-link-issued');
      response.set('Cache-Control', 'no-store').redirect(303, link);
    } catch (error) {
      options.logger.warn(
        { reason: normalizeOperationOutcome(error).message.slice(0, 200) },
        'intake-callback-failed',
      );
      problem(response, 502, 'unavailable');
    }
  });
  return router;
}
