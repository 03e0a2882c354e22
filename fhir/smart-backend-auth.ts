import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { SignJWT } from 'jose';
import { z } from 'zod';
import type { BackendAuthConfig, SmartBackendAuthConfig } from '../src/config/auth-config.ts';
import { normalizeOperationOutcome, OperationOutcomeError, outcome } from './operation-outcome.ts';
import {
  type JsonWebKeySet,
  loadPublishedKeys,
  loadSigningKey,
  publicJwks,
  type SigningKey,
} from './signing-keys.ts';
import { assertSafeEndpoint, discoverSmartConfiguration, type FetchFunction } from './smart-discovery.ts';
import { missingScopes } from './smart-scopes.ts';

/**
 * The service's own access to the FHIR server. SMART Backend Services (client_credentials with a
 * private_key_jwt assertion), a static bearer token, or none (the sandbox). The FHIR client asks for a
 * token before every request; this module makes that cheap (cached until shortly before expiry, one
 * request shared by concurrent callers) and never sends the assertion anywhere but the token endpoint.
 */
export interface AccessTokenProvider {
  readonly mode: BackendAuthConfig['mode'];
  /** The bearer token for the FHIR base's origin, or undefined when the server needs none. */
  getToken(): Promise<string | undefined>;
  /**
   * Forget the cached token after the FHIR server refused it (HTTP 401), so the next getToken() asks for a
   * fresh one. Pass the refused token so that several callers refused at once cause one new request only.
   */
  invalidate(rejectedToken?: string): void;
  /** False for a static token: asking again brings the same token, so a 401 stands at once. */
  readonly canRefresh: boolean;
  /** Public keys for `/.well-known/jwks.json`; undefined when the service signs nothing. */
  readonly jwks: JsonWebKeySet | undefined;
  /** The signing key (smart-backend mode), reused by the App Launch as a confidential client. */
  readonly signingKey: SigningKey | undefined;
}

export interface AccessTokenProviderOptions {
  fhirBaseUrl: string;
  dataDir: string;
  fetch?: FetchFunction;
  /** Milliseconds since the epoch; injectable so expiry can be tested without waiting. */
  now?: () => number;
}

export const clientAssertionType = 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer';

/** A signed client assertion (RFC 7523 as profiled by SMART): iss = sub = client id, aud = token URL. */
export async function createClientAssertion(
  signingKey: SigningKey,
  options: { clientId: string; tokenUrl: string; lifetimeSeconds?: number; now?: () => number },
): Promise<string> {
  const issuedAt = Math.floor((options.now ?? Date.now)() / 1000);
  const lifetime = Math.min(options.lifetimeSeconds ?? 240, 300);
  return new SignJWT({})
    .setProtectedHeader({ alg: signingKey.alg, kid: signingKey.kid, typ: 'JWT' })
    .setIssuer(options.clientId)
    .setSubject(options.clientId)
    .setAudience(options.tokenUrl)
    .setIssuedAt(issuedAt)
    .setExpirationTime(issuedAt + lifetime)
    .setJti(randomUUID())
    .sign(signingKey.privateKey);
}

const tokenResponseSchema = z.object({
  access_token: z.string().min(1),
  token_type: z.string().refine((value) => value.toLowerCase() === 'bearer', 'token_type must be bearer'),
  expires_in: z.coerce.number().positive().optional(),
  scope: z.string().optional(),
});

/** When the server omits expires_in; SMART asks servers for at most five minutes anyway. */
const assumedLifetimeSeconds = 300;

/** Refresh a little before expiry so a token never expires between getToken() and the server reading it. */
function refreshMarginSeconds(lifetimeSeconds: number): number {
  return Math.min(60, Math.max(2, lifetimeSeconds * 0.1));
}

/**
 * Why the service could not get a token, for start-up and for readiness:
 * - `refused`: the token endpoint answered 4xx (invalid_client, invalid_scope, unauthorized_client, invalid_grant...);
 *   asking again with the same registration brings the same answer, so start-up stops;
 * - `unavailable`: no answer, a 5xx or a 429 (also from discovery); worth asking again later;
 * - `narrower-grant`: a token, but with fewer scopes than the service needs;
 * - `unusable`: discovery or the token response is not something the service can use (no private_key_jwt, not JSON).
 */
export type TokenFailureKind = 'refused' | 'unavailable' | 'narrower-grant' | 'unusable';

export class TokenEndpointError extends OperationOutcomeError {
  readonly kind: TokenFailureKind;
  /** The token endpoint (or, while it is not yet known, the discovery URL). */
  readonly endpoint: string;
  /** The token endpoint's HTTP status, when it answered. */
  readonly httpStatus: number | undefined;
  /** The OAuth `error` code, when the refusal carried one. */
  readonly oauthError: string | undefined;
  /** Requested scopes the grant leaves out (`narrower-grant`). */
  readonly missingScopes: string[];
  override readonly isRetryable: boolean;

  constructor(
    kind: TokenFailureKind,
    message: string,
    details: {
      endpoint: string;
      httpStatus?: number;
      oauthError?: string;
      missingScopes?: string[];
      cause?: unknown;
    },
  ) {
    const code = kind === 'unavailable' ? 'transient' : kind === 'narrower-grant' ? 'forbidden' : 'security';
    super(outcome(code, message), {
      status: kind === 'unavailable' ? 503 : kind === 'narrower-grant' ? 403 : 502,
      cause: details.cause,
    });
    this.name = 'TokenEndpointError';
    this.kind = kind;
    this.endpoint = details.endpoint;
    this.httpStatus = details.httpStatus;
    this.oauthError = details.oauthError;
    this.missingScopes = details.missingScopes ?? [];
    // A refused client or a narrower grant stays so until someone changes the registration or the configuration.
    this.isRetryable = kind === 'unavailable';
  }
}

/** Text from the token endpoint on one line and capped: it reaches logs and the operator's terminal. */
function oneLine(text: string, limit: number): string {
  const flat = text.replace(/\p{Cc}+/gu, ' ').trim();
  return flat.length > limit ? `${flat.slice(0, limit)}...` : flat;
}

const maxErrorDescriptionCharacters = 200;

async function readTokenError(response: Response): Promise<{ error?: string; description?: string }> {
  const text = (await response.text().catch(() => '')).slice(0, 4000);
  try {
    const body = JSON.parse(text) as { error?: unknown; error_description?: unknown };
    return {
      ...(typeof body.error === 'string' && body.error ? { error: oneLine(body.error, 60) } : {}),
      ...(typeof body.error_description === 'string' && body.error_description
        ? { description: oneLine(body.error_description, maxErrorDescriptionCharacters) }
        : {}),
    };
  } catch {
    // Not JSON: the status alone; the body may echo secrets, so it is not quoted.
    return {};
  }
}

/** What an operator should check for each OAuth error a token endpoint gives a Backend Services client. */
const oauthErrorHints: Record<string, string> = {
  invalid_client:
    "check auth.backend.clientId and that the server holds the service's public key (its JWKS URL /.well-known/jwks.json)",
  unauthorized_client: 'the client is not allowed the client_credentials grant on this server',
  invalid_scope: 'the client is not allowed some of auth.backend.scopes',
  invalid_grant: 'the server refused the signed assertion (check the clocks and the key the server holds)',
};

function createSmartBackendProvider(
  config: SmartBackendAuthConfig,
  signingKey: SigningKey,
  jwks: JsonWebKeySet,
  options: AccessTokenProviderOptions,
): AccessTokenProvider {
  const fetchFunction = options.fetch ?? fetch;
  const now = options.now ?? Date.now;
  let tokenUrl: string | undefined = config.tokenUrl;
  let cached: { token: string; refreshAt: number } | undefined;
  let inflight: Promise<string> | undefined;

  async function resolveTokenUrl(): Promise<string> {
    if (tokenUrl) {
      // Checked, but used as written: it is also the assertion's aud, which servers compare as a string.
      try {
        assertSafeEndpoint(tokenUrl, 'the token endpoint');
      } catch (error) {
        throw new TokenEndpointError('unusable', normalizeOperationOutcome(error).message, {
          endpoint: tokenUrl,
          cause: error,
        });
      }
      return tokenUrl;
    }
    const discoveryUrl = `${options.fhirBaseUrl.replace(/\/+$/, '')}/.well-known/smart-configuration`;
    let discovered: Awaited<ReturnType<typeof discoverSmartConfiguration>>;
    try {
      discovered = await discoverSmartConfiguration(options.fhirBaseUrl, {
        fetch: fetchFunction,
        timeoutMs: config.requestTimeoutMs,
      });
    } catch (error) {
      const failure = normalizeOperationOutcome(error);
      // Discovery answers 503 for no answer or a 5xx; anything else (404, not JSON) will not change by itself.
      throw new TokenEndpointError(failure.status === 503 ? 'unavailable' : 'unusable', failure.message, {
        endpoint: discoveryUrl,
        cause: error,
      });
    }
    const methods = discovered.token_endpoint_auth_methods_supported;
    if (methods && !methods.includes('private_key_jwt')) {
      throw new TokenEndpointError(
        'unusable',
        `the token endpoint ${discovered.token_endpoint} does not accept private_key_jwt (offers ${methods.join(', ')})`,
        { endpoint: discovered.token_endpoint },
      );
    }
    const algorithms = discovered.token_endpoint_auth_signing_alg_values_supported;
    if (algorithms && !algorithms.includes(config.alg)) {
      throw new TokenEndpointError(
        'unusable',
        `the token endpoint ${discovered.token_endpoint} does not accept ${config.alg} assertions (offers ${algorithms.join(', ')}); set auth.backend.alg`,
        { endpoint: discovered.token_endpoint },
      );
    }
    tokenUrl = discovered.token_endpoint;
    return tokenUrl;
  }

  async function requestToken(): Promise<string> {
    const endpoint = await resolveTokenUrl();
    const assertion = await createClientAssertion(signingKey, {
      clientId: config.clientId,
      tokenUrl: endpoint,
      lifetimeSeconds: config.assertionLifetimeSeconds,
      now,
    });
    const requestedAt = now();
    let response: Response;
    try {
      response = await fetchFunction(endpoint, {
        method: 'POST',
        headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
        body: new URLSearchParams({
          grant_type: 'client_credentials',
          scope: config.scopes.join(' '),
          client_assertion_type: clientAssertionType,
          client_assertion: assertion,
        }),
        // A redirect would carry the assertion somewhere nobody checked.
        redirect: 'error',
        signal: AbortSignal.timeout(config.requestTimeoutMs),
      });
    } catch (error) {
      if (!config.tokenUrl) tokenUrl = undefined;
      throw new TokenEndpointError(
        'unavailable',
        `token request to ${endpoint} failed: ${oneLine((error as Error).message, 200)}`,
        { endpoint, cause: error },
      );
    }
    if (!response.ok) {
      const { error, description } = await readTokenError(response);
      const temporary = response.status >= 500 || response.status === 429 || response.status === 408;
      const said = [error, description].filter(Boolean).join(': ') || 'no OAuth error in the response';
      const hint = !temporary && error ? oauthErrorHints[error] : undefined;
      const requested = error === 'invalid_scope' ? ` (requested: ${config.scopes.join(' ')})` : '';
      throw new TokenEndpointError(
        temporary ? 'unavailable' : 'refused',
        `token endpoint ${endpoint} ${temporary ? 'is unavailable' : `refused client ${config.clientId}`} (HTTP ${response.status}): ${said}${requested}${hint ? `; ${hint}` : ''}`,
        { endpoint, httpStatus: response.status, oauthError: error },
      );
    }
    const parsed = tokenResponseSchema.safeParse(await response.json().catch(() => undefined));
    if (!parsed.success) {
      throw new TokenEndpointError(
        'unusable',
        `token endpoint ${endpoint} answered with an invalid token response: ${parsed.error.issues[0]?.message}`,
        { endpoint, httpStatus: response.status },
      );
    }
    const granted = parsed.data.scope?.split(/\s+/).filter(Boolean) ?? config.scopes;
    const missing = missingScopes(config.scopes, granted);
    if (missing.length > 0) {
      throw new TokenEndpointError(
        'narrower-grant',
        `token endpoint ${endpoint} granted client ${config.clientId} less than the service needs: missing ${missing.join(', ')} (granted: ${oneLine(granted.join(' '), 1000) || 'nothing'})`,
        { endpoint, httpStatus: response.status, missingScopes: missing },
      );
    }
    const lifetime = parsed.data.expires_in ?? assumedLifetimeSeconds;
    cached = {
      token: parsed.data.access_token,
      refreshAt: requestedAt + (lifetime - refreshMarginSeconds(lifetime)) * 1000,
    };
    return parsed.data.access_token;
  }

  return {
    mode: 'smart-backend',
    canRefresh: true,
    jwks,
    signingKey,
    async getToken() {
      if (cached && now() < cached.refreshAt) return cached.token;
      inflight ??= requestToken().finally(() => {
        inflight = undefined;
      });
      return inflight;
    },
    invalidate(rejectedToken) {
      if (rejectedToken === undefined || cached?.token === rejectedToken) cached = undefined;
    },
  };
}

/**
 * Builds the provider for `auth.backend`. In smart-backend mode this loads (or generates) the signing key but
 * makes no network request; call `await provider.getToken()` once at start-up so that a wrong client id, an
 * unregistered key or a narrower grant than the service needs stops the service with a message naming the cause.
 */
export async function createAccessTokenProvider(
  authConfig: BackendAuthConfig,
  options: AccessTokenProviderOptions,
): Promise<AccessTokenProvider> {
  if (authConfig.mode === 'none') {
    return {
      mode: 'none',
      canRefresh: false,
      jwks: undefined,
      signingKey: undefined,
      getToken: async () => undefined,
      invalidate() {},
    };
  }
  if (authConfig.mode === 'static') {
    const token = authConfig.token ?? (await readFile(authConfig.tokenFile as string, 'utf8')).trim();
    if (!token) throw new Error(`auth.backend.tokenFile ${authConfig.tokenFile} is empty`);
    return {
      mode: 'static',
      canRefresh: false,
      jwks: undefined,
      signingKey: undefined,
      getToken: async () => token,
      invalidate() {},
    };
  }
  const signingKey = await loadSigningKey({
    alg: authConfig.alg,
    dataDir: options.dataDir,
    keyFile: authConfig.keyFile,
    keyId: authConfig.keyId,
  });
  const published = await loadPublishedKeys(authConfig.publishedKeyFiles);
  return createSmartBackendProvider(authConfig, signingKey, publicJwks([signingKey], published), options);
}
