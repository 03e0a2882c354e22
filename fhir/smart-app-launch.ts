import { createHash, randomBytes } from 'node:crypto';
import { createLocalJWKSet, type JSONWebKeySet, errors as joseErrors, jwtVerify } from 'jose';
import { z } from 'zod';
import { OperationOutcomeError, outcome, outcomeError } from './operation-outcome.ts';
import { clientAssertionType } from './smart-backend-auth.ts';
import {
  assertSafeEndpoint,
  discoverSmartConfiguration,
  type FetchFunction,
  type SmartConfiguration,
} from './smart-discovery.ts';

/**
 * SMART App Launch 2.2 without HTTP-framework concerns: building the authorize redirect (PKCE S256, state,
 * aud = iss) and completing it (code exchange with the verifier, id_token verified against the server's JWKS).
 * The express routes in src/http/smart-launch.ts keep the pending launch in a server-side session.
 */

/** What must survive between the redirect to the authorize endpoint and the callback; kept server-side only. */
export interface PendingLaunch {
  state: string;
  codeVerifier: string;
  fhirBaseUrl: string;
  tokenEndpoint: string;
  issuer: string | undefined;
  jwksUri: string | undefined;
  redirectUri: string;
  scopes: string[];
  standalone: boolean;
  createdAt: number;
}

export interface LaunchTokenResult {
  fhirBaseUrl: string;
  accessToken: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
  scopes: string[];
  patient: string;
  encounter: string | undefined;
  /** Whether the EHR wants the app to show a patient banner (true unless the server says false). */
  needPatientBanner: boolean;
  fhirUser: string | undefined;
  /** Present when the server granted online_access or offline_access; server-side only, like the access token. */
  refreshToken: string | undefined;
  tokenEndpoint: string;
}

/** 256 random bits, base64url: above the 122 bits SMART asks of `state` and within PKCE's 43-128 characters. */
export function randomToken(): string {
  return randomBytes(32).toString('base64url');
}

export function codeChallengeFor(codeVerifier: string): string {
  return createHash('sha256').update(codeVerifier).digest('base64url');
}

const normalizeBase = (url: string) => url.replace(/\/+$/, '');

/** The configured FHIR base matching `iss` (as configured), or undefined; only exact matches (ignoring a trailing slash) count. */
export function findAllowedIssuer(iss: string, allowedIssuers: readonly string[]): string | undefined {
  const wanted = normalizeBase(iss);
  return allowedIssuers.find((allowed) => normalizeBase(allowed) === wanted);
}

const launchRefused = (diagnostics: string, status = 401) =>
  new OperationOutcomeError(outcome('security', diagnostics), { status });

export async function beginLaunch(options: {
  fhirBaseUrl: string;
  /** The EHR's opaque launch id; absent for a standalone launch. */
  launch: string | undefined;
  clientId: string;
  redirectUri: string;
  scopes: readonly string[];
  fetch?: FetchFunction;
  timeoutMs?: number;
  now?: () => number;
  /** Replaces plain discovery, e.g. with a cached one. */
  discover?: (fhirBaseUrl: string) => Promise<SmartConfiguration>;
}): Promise<{ authorizeUrl: string; pending: PendingLaunch }> {
  const configuration = options.discover
    ? await options.discover(options.fhirBaseUrl)
    : await discoverSmartConfiguration(options.fhirBaseUrl, {
        fetch: options.fetch,
        timeoutMs: options.timeoutMs,
      });
  if (!configuration.code_challenge_methods_supported?.includes('S256')) {
    throw launchRefused(
      `the authorization server of ${options.fhirBaseUrl} does not advertise PKCE S256 (code_challenge_methods_supported); SMART App Launch 2.2 requires it, so the launch is refused`,
      502,
    );
  }
  if (!configuration.authorization_endpoint) {
    throw launchRefused(
      `the smart-configuration of ${options.fhirBaseUrl} names no authorization_endpoint`,
      502,
    );
  }
  const authorizeEndpoint = assertSafeEndpoint(
    configuration.authorization_endpoint,
    'the authorization endpoint',
  );
  const wantsIdToken = options.scopes.includes('openid');
  if (wantsIdToken && (!configuration.issuer || !configuration.jwks_uri)) {
    throw launchRefused(
      `the smart-configuration of ${options.fhirBaseUrl} lacks issuer or jwks_uri, so an id_token could not be verified`,
      502,
    );
  }
  if (configuration.jwks_uri) assertSafeEndpoint(configuration.jwks_uri, 'the jwks_uri');

  const state = randomToken();
  const codeVerifier = randomToken();
  const authorizeUrl = new URL(authorizeEndpoint);
  const parameters: Record<string, string> = {
    response_type: 'code',
    client_id: options.clientId,
    redirect_uri: options.redirectUri,
    scope: options.scopes.join(' '),
    state,
    aud: options.fhirBaseUrl,
    code_challenge: codeChallengeFor(codeVerifier),
    code_challenge_method: 'S256',
    ...(options.launch ? { launch: options.launch } : {}),
  };
  for (const [name, value] of Object.entries(parameters)) authorizeUrl.searchParams.set(name, value);
  return {
    authorizeUrl: authorizeUrl.href,
    pending: {
      state,
      codeVerifier,
      fhirBaseUrl: options.fhirBaseUrl,
      tokenEndpoint: configuration.token_endpoint,
      issuer: configuration.issuer,
      jwksUri: configuration.jwks_uri,
      redirectUri: options.redirectUri,
      scopes: [...options.scopes],
      standalone: !options.launch,
      createdAt: (options.now ?? Date.now)(),
    },
  };
}

const launchTokenResponseSchema = z
  .object({
    access_token: z.string().min(1),
    token_type: z.string().refine((value) => value.toLowerCase() === 'bearer', 'token_type must be bearer'),
    expires_in: z.coerce.number().positive().optional(),
    scope: z.string().optional(),
    id_token: z.string().optional(),
    patient: z.string().min(1).optional(),
    encounter: z.string().min(1).optional(),
    refresh_token: z.string().min(1).optional(),
    need_patient_banner: z.boolean().optional(),
    /** SMART 2.2 context beyond patient/encounter, e.g. `[{ reference: 'Encounter/123' }]`. */
    fhirContext: z.array(z.object({ reference: z.string().optional() }).loose()).optional(),
  })
  .loose();

/** Signature algorithms accepted on an id_token; `none` and HMAC never are. */
const idTokenAlgorithms = [
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
  'EdDSA',
];

async function fetchJwks(
  jwksUri: string,
  fetchFunction: FetchFunction,
  timeoutMs: number,
): Promise<JSONWebKeySet> {
  let response: Response;
  try {
    response = await fetchFunction(jwksUri, {
      headers: { accept: 'application/json' },
      redirect: 'error',
      signal: AbortSignal.timeout(timeoutMs),
    });
  } catch (error) {
    throw outcomeError(
      'transient',
      `fetching the authorization server's JWKS failed: ${(error as Error).message}`,
      503,
    );
  }
  const body = (await response.json().catch(() => undefined)) as { keys?: unknown } | undefined;
  if (!response.ok || !Array.isArray(body?.keys)) {
    throw launchRefused(
      `the authorization server's jwks_uri did not return a JWKS (HTTP ${response.status})`,
      502,
    );
  }
  return body as JSONWebKeySet;
}

/** Some servers give the encounter only as a 2.2 `fhirContext` reference. */
function encounterFromFhirContext(fhirContext: { reference?: string }[] | undefined): string | undefined {
  const reference = fhirContext?.find((item) => item.reference?.startsWith('Encounter/'))?.reference;
  return reference?.slice('Encounter/'.length) || undefined;
}

function describeIdTokenFailure(error: unknown): string {
  if (error instanceof joseErrors.JWTExpired) return 'the id_token has expired';
  if (error instanceof joseErrors.JWSSignatureVerificationFailed)
    return 'the id_token signature does not verify';
  if (error instanceof joseErrors.JWKSNoMatchingKey) return 'no key in the server JWKS matches the id_token';
  if (error instanceof joseErrors.JWTClaimValidationFailed)
    return `the id_token failed the "${error.claim}" check: ${error.message}`;
  if (error instanceof joseErrors.JOSEError) return `the id_token is invalid: ${error.message}`;
  return `the id_token could not be verified: ${(error as Error).message}`;
}

interface TokenRequestOptions {
  clientId: string;
  /** For confidential clients: a fresh private_key_jwt assertion for the token endpoint. */
  clientAssertion?: (tokenEndpoint: string) => Promise<string>;
  fetch?: FetchFunction;
  timeoutMs?: number;
  now?: () => number;
}

/** POSTs a grant to the token endpoint (never following redirects) and returns the validated token response. */
async function requestLaunchToken(
  tokenEndpointUrl: string,
  form: URLSearchParams,
  options: TokenRequestOptions,
  what: string,
): Promise<z.infer<typeof launchTokenResponseSchema>> {
  // Checked, but used as written: it is also a client assertion's aud, which servers compare as a string.
  assertSafeEndpoint(tokenEndpointUrl, 'the token endpoint');
  const tokenEndpoint = tokenEndpointUrl;
  if (options.clientAssertion) {
    form.set('client_assertion_type', clientAssertionType);
    form.set('client_assertion', await options.clientAssertion(tokenEndpoint));
  } else {
    form.set('client_id', options.clientId);
  }
  let response: Response;
  try {
    response = await (options.fetch ?? fetch)(tokenEndpoint, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
      body: form,
      redirect: 'error',
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
  } catch (error) {
    throw outcomeError('transient', `the ${what} failed: ${(error as Error).message}`, 503);
  }
  const body = await response.json().catch(() => undefined);
  if (!response.ok) {
    const error = body as { error?: unknown; error_description?: unknown } | undefined;
    const reason = [error?.error, error?.error_description]
      .filter((part) => typeof part === 'string')
      .join(': ');
    throw launchRefused(
      `the authorization server refused the ${what} (HTTP ${response.status}${reason ? `: ${reason.slice(0, 300)}` : ''})`,
    );
  }
  const parsed = launchTokenResponseSchema.safeParse(body);
  if (!parsed.success) {
    throw launchRefused(
      `the token response is invalid: ${parsed.error.issues[0]?.path.join('.')} ${parsed.error.issues[0]?.message}`,
      502,
    );
  }
  return parsed.data;
}

/**
 * Renews a launch's access token with its refresh token (granted for online_access or offline_access). The
 * patient must stay the same: a server answering with another patient is refused.
 */
export async function refreshLaunch(
  grant: { tokenEndpoint: string; refreshToken: string; patient: string },
  options: TokenRequestOptions,
): Promise<{ accessToken: string; expiresAt: number; scopes: string[] | undefined; refreshToken: string }> {
  const requestedAt = (options.now ?? Date.now)();
  const tokenResponse = await requestLaunchToken(
    grant.tokenEndpoint,
    new URLSearchParams({ grant_type: 'refresh_token', refresh_token: grant.refreshToken }),
    options,
    'token refresh',
  );
  if (tokenResponse.patient && tokenResponse.patient !== grant.patient) {
    throw launchRefused('the refreshed token is for another patient', 502);
  }
  return {
    accessToken: tokenResponse.access_token,
    expiresAt: requestedAt + (tokenResponse.expires_in ?? 300) * 1000,
    scopes: tokenResponse.scope?.split(/\s+/).filter(Boolean),
    refreshToken: tokenResponse.refresh_token ?? grant.refreshToken,
  };
}

export async function completeLaunch(
  pending: PendingLaunch,
  options: TokenRequestOptions & { code: string },
): Promise<LaunchTokenResult> {
  const fetchFunction = options.fetch ?? fetch;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const now = options.now ?? Date.now;
  const requestedAt = now();
  const tokenResponse = await requestLaunchToken(
    pending.tokenEndpoint,
    new URLSearchParams({
      grant_type: 'authorization_code',
      code: options.code,
      redirect_uri: pending.redirectUri,
      code_verifier: pending.codeVerifier,
    }),
    options,
    'code',
  );

  let fhirUser: string | undefined;
  if (pending.scopes.includes('openid')) {
    if (!tokenResponse.id_token)
      throw launchRefused('openid was requested but the token response has no id_token');
    const jwks = await fetchJwks(pending.jwksUri as string, fetchFunction, timeoutMs);
    try {
      const { payload } = await jwtVerify(tokenResponse.id_token, createLocalJWKSet(jwks), {
        issuer: pending.issuer,
        audience: options.clientId,
        algorithms: idTokenAlgorithms,
        requiredClaims: ['exp', 'sub'],
        currentDate: new Date(now()),
        clockTolerance: 30,
      });
      fhirUser = typeof payload.fhirUser === 'string' ? payload.fhirUser : undefined;
    } catch (error) {
      throw launchRefused(describeIdTokenFailure(error));
    }
  }
  if (!tokenResponse.patient) {
    throw launchRefused(
      'the authorization server gave no patient in context; the review app works on one patient',
      502,
    );
  }
  const lifetime = tokenResponse.expires_in ?? 300;
  return {
    fhirBaseUrl: pending.fhirBaseUrl,
    accessToken: tokenResponse.access_token,
    expiresAt: requestedAt + lifetime * 1000,
    scopes: tokenResponse.scope?.split(/\s+/).filter(Boolean) ?? pending.scopes,
    patient: tokenResponse.patient,
    encounter: tokenResponse.encounter ?? encounterFromFhirContext(tokenResponse.fhirContext),
    needPatientBanner: tokenResponse.need_patient_banner ?? true,
    fhirUser,
    refreshToken: tokenResponse.refresh_token,
    tokenEndpoint: pending.tokenEndpoint,
  };
}
