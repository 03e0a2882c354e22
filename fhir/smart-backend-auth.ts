import { randomUUID } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { SignJWT } from 'jose';
import { z } from 'zod';
import type { BackendAuthConfig, SmartBackendAuthConfig } from '../src/config/auth-config.ts';
import { OperationOutcomeError, outcome, outcomeError } from './operation-outcome.ts';
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

async function describeTokenError(response: Response): Promise<string> {
  const text = (await response.text().catch(() => '')).slice(0, 2000);
  try {
    const body = JSON.parse(text) as { error?: unknown; error_description?: unknown };
    const parts = [body.error, body.error_description].filter((part) => typeof part === 'string');
    if (parts.length > 0) return parts.join(': ').slice(0, 300);
  } catch {
    // Not JSON: fall through to the status alone; the body may echo secrets, so it is not quoted.
  }
  return 'no OAuth error in the response';
}

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
      assertSafeEndpoint(tokenUrl, 'the token endpoint');
      return tokenUrl;
    }
    const discovered = await discoverSmartConfiguration(options.fhirBaseUrl, {
      fetch: fetchFunction,
      timeoutMs: config.requestTimeoutMs,
    });
    const methods = discovered.token_endpoint_auth_methods_supported;
    if (methods && !methods.includes('private_key_jwt')) {
      throw outcomeError(
        'not-supported',
        `the token endpoint does not accept private_key_jwt (offers ${methods.join(', ')})`,
        502,
      );
    }
    const algorithms = discovered.token_endpoint_auth_signing_alg_values_supported;
    if (algorithms && !algorithms.includes(config.alg)) {
      throw outcomeError(
        'not-supported',
        `the token endpoint does not accept ${config.alg} assertions (offers ${algorithms.join(', ')}); set auth.backend.alg`,
        502,
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
      throw outcomeError(
        'transient',
        `token request to ${new URL(endpoint).origin} failed: ${(error as Error).message}`,
        503,
      );
    }
    if (!response.ok) {
      const reason = await describeTokenError(response);
      const retryable = response.status >= 500 || response.status === 429;
      throw new OperationOutcomeError(
        outcome(
          retryable ? 'transient' : 'security',
          `token endpoint refused the service (HTTP ${response.status}): ${reason}`,
        ),
        { status: retryable ? 503 : 502 },
      );
    }
    const parsed = tokenResponseSchema.safeParse(await response.json().catch(() => undefined));
    if (!parsed.success) {
      throw outcomeError(
        'invalid',
        `token endpoint answered with an invalid token response: ${parsed.error.issues[0]?.message}`,
        502,
      );
    }
    const granted = parsed.data.scope?.split(/\s+/).filter(Boolean) ?? config.scopes;
    const missing = missingScopes(config.scopes, granted);
    if (missing.length > 0) {
      throw outcomeError(
        'forbidden',
        `the FHIR server granted client ${config.clientId} less than the service needs: missing ${missing.join(', ')} (granted: ${granted.join(' ') || 'nothing'})`,
        403,
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
