import { createHash, randomBytes } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import {
  createLocalJWKSet,
  decodeJwt,
  decodeProtectedHeader,
  exportJWK,
  generateKeyPair,
  type JSONWebKeySet,
  type JWTPayload,
  jwtVerify,
  type ProtectedHeaderParameters,
  SignJWT,
} from 'jose';

/**
 * A strict SMART authorization server for tests, over real HTTP. It does what a careful production server does
 * (SMART Backend Services with private_key_jwt checked against the client's JWKS, jti replay, exp at most five
 * minutes ahead, aud = token URL; App Launch with PKCE S256 and an id_token signed by its own key) and can
 * misbehave on purpose for negative tests. It can sit in front of a FHIR server (proxying `<fhirBasePath>/*`
 * after checking the bearer token) or beside one (`checkBearer`).
 */
export interface RegisteredClient {
  clientId: string;
  /** Keys for private_key_jwt: inline, or a URL fetched on every token request (no cache, so tests see changes). */
  jwks?: JSONWebKeySet;
  jwksUrl?: string;
  /** Scopes this client may receive; requested scopes outside this list are dropped from the grant. */
  allowedScopes: string[];
  /** For App Launch. */
  redirectUris?: string[];
}

export interface LaunchContextSeed {
  patient: string;
  encounter?: string;
  fhirUser?: string;
  /** Give the encounter only as a SMART 2.2 `fhirContext` reference instead of the `encounter` field. */
  encounterAsFhirContext?: boolean;
  needPatientBanner?: boolean;
}

export interface Misbehaviour {
  /** false: the smart-configuration omits S256 from code_challenge_methods_supported. */
  advertiseS256: boolean;
  /** An aud other than the client id on the id_token. */
  idTokenAudience: string | undefined;
  /** Sign the id_token with a key that is not in the JWKS (same kid). */
  idTokenBadSignature: boolean;
  /** An id_token that expired an hour ago. */
  idTokenExpired: boolean;
  /** Answer client_credentials with this scope string instead of the real grant. */
  grantedScopeOverride: string | undefined;
  accessTokenLifetimeSeconds: number;
  /** Issue access tokens that the FHIR side already treats as expired (expires_in still looks normal). */
  accessTokenExpired: boolean;
  /** Answer this many of the next token requests 503 temporarily_unavailable, as during an outage. */
  tokenEndpointUnavailable: number;
}

export interface IssuedAccessToken {
  token: string;
  clientId: string;
  scopes: string[];
  expiresAt: number;
  patient?: string;
  encounter?: string;
}

export interface TokenRequestRecord {
  grantType: string | undefined;
  clientId: string | undefined;
  outcome: 'issued' | 'refused';
  error?: string;
  assertion?: { header: ProtectedHeaderParameters; payload: JWTPayload };
}

export interface SmartAuthorizationServer {
  /** The server's origin, e.g. http://127.0.0.1:41234. */
  url: string;
  fhirBaseUrl: string;
  issuer: string;
  tokenUrl: string;
  authorizeUrl: string;
  jwksUrl: string;
  misbehave: Misbehaviour;
  tokenRequests: TokenRequestRecord[];
  fhirRequests: { method: string; path: string; status: number }[];
  registerClient(client: RegisteredClient): void;
  /** An EHR launch id bound to a context. */
  createLaunch(context: LaunchContextSeed): string;
  /** The context a standalone launch (`launch/patient`) receives. */
  setStandaloneContext(context: LaunchContextSeed): void;
  /** Makes every issued access token invalid, as after a key rotation on the server. */
  revokeAllAccessTokens(): void;
  /** Makes every refresh token invalid, as when the user signs out of the EHR. */
  revokeAllRefreshTokens(): void;
  /** The token behind an Authorization header, if it is valid now. */
  checkBearer(authorization: string | undefined): IssuedAccessToken | undefined;
  close(): Promise<void>;
}

export interface SmartAuthorizationServerOptions {
  fhirBasePath?: string;
  /** Forward authorised FHIR requests here (`<upstream><path after fhirBasePath>`). */
  fhirUpstream?: string;
  /** Or answer them in process; default: an empty searchset Bundle. */
  fhirHandler?: (request: IncomingMessage, response: ServerResponse, token: IssuedAccessToken) => void;
  accessTokenLifetimeSeconds?: number;
  /**
   * Refuse (403) FHIR requests the token's scopes do not allow: type and permission letter (c r u d s, v1
   * read/write too), checked per entry for a batch or transaction. Patient compartments are not enforced.
   */
  enforceScopes?: boolean;
}

const assertionAlgorithms = ['ES384', 'RS384'];
const maxAssertionLifetimeSeconds = 300;

class OAuthError extends Error {
  readonly error: string;
  readonly status: number;
  constructor(error: string, description: string, status = 400) {
    super(description);
    this.error = error;
    this.status = status;
  }
}

function sendJson(
  response: ServerResponse,
  status: number,
  body: unknown,
  headers: Record<string, string> = {},
) {
  response.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store', ...headers });
  response.end(JSON.stringify(body));
}

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks);
}

const randomId = () => randomBytes(24).toString('base64url');

export async function startSmartAuthorizationServer(
  options: SmartAuthorizationServerOptions = {},
): Promise<SmartAuthorizationServer> {
  const fhirBasePath = options.fhirBasePath ?? '/fhir';
  const signing = await generateKeyPair('RS256', { extractable: true });
  const impostor = await generateKeyPair('RS256', { extractable: true });
  const kid = 'test-authorization-server-1';
  const serverJwks: JSONWebKeySet = {
    keys: [{ ...(await exportJWK(signing.publicKey)), kid, alg: 'RS256', use: 'sig' }],
  };

  const clients = new Map<string, RegisteredClient>();
  const launches = new Map<string, LaunchContextSeed>();
  let standaloneContext: LaunchContextSeed | undefined;
  const seenJti = new Map<string, number>();
  const accessTokens = new Map<string, IssuedAccessToken>();
  const refreshTokens = new Map<string, { clientId: string; scopes: string[]; context: LaunchContextSeed }>();
  const codes = new Map<
    string,
    {
      clientId: string;
      redirectUri: string;
      codeChallenge: string;
      scopes: string[];
      context: LaunchContextSeed;
      expiresAt: number;
      used: boolean;
    }
  >();
  const misbehave: Misbehaviour = {
    advertiseS256: true,
    idTokenAudience: undefined,
    idTokenBadSignature: false,
    idTokenExpired: false,
    grantedScopeOverride: undefined,
    accessTokenLifetimeSeconds: options.accessTokenLifetimeSeconds ?? 300,
    accessTokenExpired: false,
    tokenEndpointUnavailable: 0,
  };
  const tokenRequests: TokenRequestRecord[] = [];
  const bufferedBodies = new WeakMap<IncomingMessage, Buffer>();
  const fhirRequests: { method: string; path: string; status: number }[] = [];
  let origin = '';
  const urls = () => ({
    fhirBaseUrl: `${origin}${fhirBasePath}`,
    issuer: `${origin}/auth`,
    tokenUrl: `${origin}/auth/token`,
    authorizeUrl: `${origin}/auth/authorize`,
    jwksUrl: `${origin}/auth/jwks`,
  });

  function smartConfiguration() {
    const { issuer, tokenUrl, authorizeUrl, jwksUrl } = urls();
    return {
      issuer,
      jwks_uri: jwksUrl,
      authorization_endpoint: authorizeUrl,
      token_endpoint: tokenUrl,
      token_endpoint_auth_methods_supported: ['private_key_jwt', 'none'],
      token_endpoint_auth_signing_alg_values_supported: assertionAlgorithms,
      grant_types_supported: ['authorization_code', 'client_credentials'],
      scopes_supported: ['openid', 'fhirUser', 'launch', 'launch/patient', 'system/*.rs', 'patient/*.rs'],
      response_types_supported: ['code'],
      code_challenge_methods_supported: misbehave.advertiseS256 ? ['S256'] : ['plain'],
      capabilities: [
        'launch-ehr',
        'launch-standalone',
        'client-public',
        'client-confidential-asymmetric',
        'context-ehr-patient',
        'context-standalone-patient',
        'sso-openid-connect',
        'permission-v2',
      ],
    };
  }

  async function clientKeys(client: RegisteredClient): Promise<JSONWebKeySet> {
    if (client.jwks) return client.jwks;
    if (!client.jwksUrl) throw new OAuthError('invalid_client', 'client has no registered keys', 401);
    const response = await fetch(client.jwksUrl, { redirect: 'error' });
    if (!response.ok)
      throw new OAuthError('invalid_client', `client JWKS URL answered ${response.status}`, 401);
    return (await response.json()) as JSONWebKeySet;
  }

  /** Verifies a private_key_jwt assertion and returns the client it authenticates. */
  async function authenticateAssertion(
    form: URLSearchParams,
    record: TokenRequestRecord,
  ): Promise<RegisteredClient> {
    if (form.get('client_assertion_type') !== 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer') {
      throw new OAuthError('invalid_client', 'client_assertion_type must be jwt-bearer', 401);
    }
    const assertion = form.get('client_assertion');
    if (!assertion) throw new OAuthError('invalid_client', 'client_assertion missing', 401);
    let header: ProtectedHeaderParameters;
    let unverified: JWTPayload;
    try {
      header = decodeProtectedHeader(assertion);
      unverified = decodeJwt(assertion);
    } catch {
      throw new OAuthError('invalid_client', 'client_assertion is not a JWT', 401);
    }
    record.assertion = { header, payload: unverified };
    if (!header.alg || !assertionAlgorithms.includes(header.alg)) {
      throw new OAuthError('invalid_client', `assertion alg ${header.alg} not accepted`, 401);
    }
    if (header.typ !== 'JWT') throw new OAuthError('invalid_client', 'assertion typ must be JWT', 401);
    if (!header.kid) throw new OAuthError('invalid_client', 'assertion header has no kid', 401);
    const clientId = unverified.iss;
    const client = clientId ? clients.get(clientId) : undefined;
    if (!client) throw new OAuthError('invalid_client', 'unknown client (iss)', 401);
    record.clientId = client.clientId;
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(assertion, createLocalJWKSet(await clientKeys(client)), {
        algorithms: assertionAlgorithms,
        issuer: client.clientId,
        subject: client.clientId,
        audience: urls().tokenUrl,
        requiredClaims: ['exp', 'jti', 'iss', 'sub', 'aud'],
      }));
    } catch (error) {
      throw new OAuthError('invalid_client', `assertion rejected: ${(error as Error).message}`, 401);
    }
    const nowSeconds = Math.floor(Date.now() / 1000);
    if ((payload.exp as number) - nowSeconds > maxAssertionLifetimeSeconds) {
      throw new OAuthError('invalid_client', 'assertion exp is more than 5 minutes ahead', 401);
    }
    const jti = payload.jti as string;
    for (const [seen, expiresAt] of seenJti) if (expiresAt < nowSeconds) seenJti.delete(seen);
    if (seenJti.has(`${client.clientId} ${jti}`))
      throw new OAuthError('invalid_client', 'assertion jti replayed', 401);
    seenJti.set(`${client.clientId} ${jti}`, payload.exp as number);
    return client;
  }

  function issueAccessToken(details: Omit<IssuedAccessToken, 'token' | 'expiresAt'>): IssuedAccessToken {
    const issued = {
      ...details,
      token: randomId(),
      expiresAt: misbehave.accessTokenExpired
        ? Date.now() - 1000
        : Date.now() + misbehave.accessTokenLifetimeSeconds * 1000,
    };
    accessTokens.set(issued.token, issued);
    return issued;
  }

  async function clientCredentials(form: URLSearchParams, record: TokenRequestRecord) {
    const client = await authenticateAssertion(form, record);
    const requested = (form.get('scope') ?? '').split(/\s+/).filter(Boolean);
    const granted = requested.filter((scope) => client.allowedScopes.includes(scope));
    if (granted.length === 0)
      throw new OAuthError('invalid_scope', 'none of the requested scopes is allowed');
    const issued = issueAccessToken({ clientId: client.clientId, scopes: granted });
    return {
      access_token: issued.token,
      token_type: 'bearer',
      expires_in: misbehave.accessTokenLifetimeSeconds,
      scope: misbehave.grantedScopeOverride ?? granted.join(' '),
    };
  }

  async function idTokenFor(clientId: string, context: LaunchContextSeed): Promise<string> {
    const nowSeconds = Math.floor(Date.now() / 1000);
    const issuedAt = misbehave.idTokenExpired ? nowSeconds - 7200 : nowSeconds;
    return new SignJWT({ fhirUser: context.fhirUser })
      .setProtectedHeader({ alg: 'RS256', kid, typ: 'JWT' })
      .setIssuer(urls().issuer)
      .setSubject(context.fhirUser ?? 'anonymous')
      .setAudience(misbehave.idTokenAudience ?? clientId)
      .setIssuedAt(issuedAt)
      .setExpirationTime(issuedAt + 3600)
      .sign(misbehave.idTokenBadSignature ? impostor.privateKey : signing.privateKey);
  }

  async function authorizationCode(form: URLSearchParams, record: TokenRequestRecord) {
    const code = form.get('code');
    const grant = code ? codes.get(code) : undefined;
    if (!grant || grant.used || grant.expiresAt < Date.now()) {
      throw new OAuthError('invalid_grant', 'unknown, used or expired code');
    }
    grant.used = true;
    let clientId = form.get('client_id') ?? undefined;
    if (form.has('client_assertion')) clientId = (await authenticateAssertion(form, record)).clientId;
    record.clientId = clientId;
    if (clientId !== grant.clientId)
      throw new OAuthError('invalid_grant', 'code was issued to another client');
    if (form.get('redirect_uri') !== grant.redirectUri)
      throw new OAuthError('invalid_grant', 'redirect_uri differs');
    const verifier = form.get('code_verifier') ?? '';
    if (!/^[A-Za-z0-9\-._~]{43,128}$/.test(verifier))
      throw new OAuthError('invalid_grant', 'bad code_verifier');
    if (createHash('sha256').update(verifier).digest('base64url') !== grant.codeChallenge) {
      throw new OAuthError('invalid_grant', 'PKCE verification failed');
    }
    const issued = issueAccessToken({
      clientId: grant.clientId,
      scopes: grant.scopes,
      patient: grant.context.patient,
      encounter: grant.context.encounter,
    });
    return {
      access_token: issued.token,
      token_type: 'Bearer',
      expires_in: misbehave.accessTokenLifetimeSeconds,
      scope: grant.scopes.join(' '),
      patient: grant.context.patient,
      ...(grant.context.encounter && !grant.context.encounterAsFhirContext
        ? { encounter: grant.context.encounter }
        : {}),
      ...(grant.context.encounter && grant.context.encounterAsFhirContext
        ? { fhirContext: [{ reference: `Encounter/${grant.context.encounter}` }] }
        : {}),
      ...(grant.context.needPatientBanner === undefined
        ? {}
        : { need_patient_banner: grant.context.needPatientBanner }),
      ...(grant.scopes.includes('openid')
        ? { id_token: await idTokenFor(grant.clientId, grant.context) }
        : {}),
      ...(grant.scopes.some((scope) => scope === 'online_access' || scope === 'offline_access')
        ? { refresh_token: issueRefreshToken(grant.clientId, grant.scopes, grant.context) }
        : {}),
    };
  }

  function issueRefreshToken(clientId: string, scopes: string[], context: LaunchContextSeed): string {
    const token = randomId();
    refreshTokens.set(token, { clientId, scopes, context });
    return token;
  }

  /** Refresh tokens rotate: each use returns a new one and retires the old. */
  async function refreshTokenGrant(form: URLSearchParams, record: TokenRequestRecord) {
    const presented = form.get('refresh_token') ?? '';
    const grant = refreshTokens.get(presented);
    if (!grant) throw new OAuthError('invalid_grant', 'unknown or used refresh token');
    let clientId = form.get('client_id') ?? undefined;
    if (form.has('client_assertion')) clientId = (await authenticateAssertion(form, record)).clientId;
    record.clientId = clientId;
    if (clientId !== grant.clientId) throw new OAuthError('invalid_grant', 'refresh token of another client');
    refreshTokens.delete(presented);
    const issued = issueAccessToken({
      clientId: grant.clientId,
      scopes: grant.scopes,
      patient: grant.context.patient,
      encounter: grant.context.encounter,
    });
    return {
      access_token: issued.token,
      token_type: 'Bearer',
      expires_in: misbehave.accessTokenLifetimeSeconds,
      scope: grant.scopes.join(' '),
      patient: grant.context.patient,
      refresh_token: issueRefreshToken(grant.clientId, grant.scopes, grant.context),
    };
  }

  async function tokenEndpoint(request: IncomingMessage, response: ServerResponse) {
    const record: TokenRequestRecord = { grantType: undefined, clientId: undefined, outcome: 'refused' };
    tokenRequests.push(record);
    try {
      if (misbehave.tokenEndpointUnavailable > 0) {
        misbehave.tokenEndpointUnavailable--;
        throw new OAuthError(
          'temporarily_unavailable',
          'the authorization server is down for maintenance',
          503,
        );
      }
      if (request.method !== 'POST') throw new OAuthError('invalid_request', 'POST only', 405);
      if (!request.headers['content-type']?.startsWith('application/x-www-form-urlencoded')) {
        throw new OAuthError('invalid_request', 'form encoding required');
      }
      const form = new URLSearchParams((await readBody(request)).toString('utf8'));
      record.grantType = form.get('grant_type') ?? undefined;
      let body: unknown;
      if (record.grantType === 'client_credentials') body = await clientCredentials(form, record);
      else if (record.grantType === 'authorization_code') body = await authorizationCode(form, record);
      else if (record.grantType === 'refresh_token') body = await refreshTokenGrant(form, record);
      else throw new OAuthError('unsupported_grant_type', `grant_type ${record.grantType}`);
      record.outcome = 'issued';
      sendJson(response, 200, body);
    } catch (error) {
      const oauth =
        error instanceof OAuthError ? error : new OAuthError('server_error', (error as Error).message, 500);
      record.error = `${oauth.error}: ${oauth.message}`;
      sendJson(response, oauth.status, { error: oauth.error, error_description: oauth.message });
    }
  }

  function authorizeEndpoint(url: URL, response: ServerResponse) {
    const parameter = (name: string) => url.searchParams.get(name) ?? undefined;
    const client = clients.get(parameter('client_id') ?? '');
    const redirectUri = parameter('redirect_uri');
    if (!client || !redirectUri || !client.redirectUris?.includes(redirectUri)) {
      sendJson(response, 400, {
        error: 'invalid_request',
        error_description: 'unknown client or redirect_uri',
      });
      return;
    }
    const back = (values: Record<string, string>) => {
      const target = new URL(redirectUri);
      for (const [name, value] of Object.entries(values)) target.searchParams.set(name, value);
      response.writeHead(302, { location: target.href });
      response.end();
    };
    const state = parameter('state');
    const fail = (error: string, description: string) =>
      back({ error, error_description: description, ...(state ? { state } : {}) });
    if (parameter('response_type') !== 'code') return fail('unsupported_response_type', 'code only');
    if (!state) return fail('invalid_request', 'state required');
    if (parameter('aud') !== urls().fhirBaseUrl)
      return fail('invalid_request', 'aud is not this FHIR server');
    if (parameter('code_challenge_method') !== 'S256' || !parameter('code_challenge')) {
      return fail('invalid_request', 'PKCE S256 required');
    }
    const scopes = (parameter('scope') ?? '').split(/\s+/).filter(Boolean);
    let context: LaunchContextSeed | undefined;
    if (scopes.includes('launch')) {
      context = launches.get(parameter('launch') ?? '');
      if (!context) return fail('invalid_request', 'unknown launch');
    } else if (scopes.includes('launch/patient')) {
      context = standaloneContext;
      if (!context) return fail('access_denied', 'no patient selected');
    } else {
      return fail('invalid_scope', 'this server needs a launch context');
    }
    const granted = scopes.filter(
      (scope) =>
        client.allowedScopes.includes(scope) ||
        ['launch', 'launch/patient', 'openid', 'fhirUser', 'online_access', 'offline_access'].includes(scope),
    );
    const code = randomId();
    codes.set(code, {
      clientId: client.clientId,
      redirectUri,
      codeChallenge: parameter('code_challenge') as string,
      scopes: granted,
      context,
      expiresAt: Date.now() + 60_000,
      used: false,
    });
    back({ code, state });
  }

  function checkBearer(authorization: string | undefined): IssuedAccessToken | undefined {
    const match = /^Bearer\s+(\S+)$/i.exec(authorization ?? '');
    const issued = match ? accessTokens.get(match[1]) : undefined;
    return issued && issued.expiresAt > Date.now() ? issued : undefined;
  }

  /** What a request needs, as [resource type, permission letter] pairs. */
  function neededPermissions(method: string, relativePath: string, query: string): [string, string][] {
    const [type, id, operation] = relativePath.split('/').filter(Boolean);
    if (!type || type.startsWith('$') || type === 'metadata') return [];
    if (method === 'GET')
      return [[type, id && id !== '_search' && !operation?.startsWith('_history') ? 'r' : 's']];
    if (method === 'POST') return [[type, id === '_search' ? 's' : 'c']];
    if (method === 'PUT' || method === 'PATCH') return [[type, !id && query ? 'c' : 'u']];
    if (method === 'DELETE') return [[type, 'd']];
    return [[type, 'r']];
  }

  function scopeAllows(scopes: string[], type: string, permission: string): boolean {
    return scopes.some((scope) => {
      const match = /^(patient|user|system)\/([A-Za-z]+|\*)\.([a-z*]+)$/.exec(scope);
      if (!match || (match[2] !== '*' && match[2] !== type)) return false;
      const letters =
        match[3] === 'read' ? 'rs' : match[3] === 'write' ? 'cud' : match[3] === '*' ? 'cruds' : match[3];
      return letters.includes(permission);
    });
  }

  async function deniedByScopes(request: IncomingMessage, url: URL, token: IssuedAccessToken) {
    const relativePath = url.pathname.slice(fhirBasePath.length);
    let needed = neededPermissions(request.method ?? 'GET', relativePath, url.search);
    if (request.method === 'POST' && relativePath.replace(/\/+$/, '') === '') {
      // A batch or transaction: each entry needs its own permission. The body is read here, so keep it for later.
      const body = await readBody(request);
      bufferedBodies.set(request, body);
      const bundle = JSON.parse(body.toString('utf8') || '{}') as {
        entry?: { request?: { method?: string; url?: string } }[];
      };
      needed = (bundle.entry ?? []).flatMap((entry) => {
        const [entryPath, entryQuery = ''] = (entry.request?.url ?? '').split('?');
        return neededPermissions(entry.request?.method ?? 'GET', `/${entryPath}`, entryQuery);
      });
    }
    const missing = needed.find(([type, permission]) => !scopeAllows(token.scopes, type, permission));
    return missing ? `${missing[1]} on ${missing[0]}` : undefined;
  }

  async function fhirEndpoint(request: IncomingMessage, response: ServerResponse, url: URL) {
    const record = { method: request.method ?? 'GET', path: url.pathname + url.search, status: 0 };
    fhirRequests.push(record);
    const token = checkBearer(request.headers.authorization);
    if (!token) {
      record.status = 401;
      response.writeHead(401, { 'content-type': 'application/fhir+json', 'www-authenticate': 'Bearer' });
      response.end(
        JSON.stringify({
          resourceType: 'OperationOutcome',
          issue: [
            { severity: 'error', code: 'login', diagnostics: 'missing, unknown or expired bearer token' },
          ],
        }),
      );
      return;
    }
    if (options.enforceScopes) {
      const denied = await deniedByScopes(request, url, token);
      if (denied) {
        record.status = 403;
        response.writeHead(403, { 'content-type': 'application/fhir+json' });
        response.end(
          JSON.stringify({
            resourceType: 'OperationOutcome',
            issue: [
              {
                severity: 'error',
                code: 'forbidden',
                diagnostics: `the token's scopes do not allow ${denied}`,
              },
            ],
          }),
        );
        return;
      }
    }
    record.status = 200;
    if (options.fhirHandler) return options.fhirHandler(request, response, token);
    if (options.fhirUpstream) {
      const body =
        request.method === 'GET' || request.method === 'HEAD'
          ? undefined
          : new Uint8Array(bufferedBodies.get(request) ?? (await readBody(request)));
      const forwarded = await fetch(
        `${options.fhirUpstream}${url.pathname.slice(fhirBasePath.length)}${url.search}`,
        {
          method: request.method,
          headers: Object.fromEntries(
            ['content-type', 'accept', 'if-none-exist', 'if-match', 'prefer']
              .filter((name) => request.headers[name])
              .map((name) => [name, String(request.headers[name])]),
          ),
          body,
        },
      );
      record.status = forwarded.status;
      // A reverse proxy rewrites the upstream's absolute URLs (next links, fullUrl, Location) to its own base,
      // or clients that keep their token to one origin (as they should) would refuse to follow them.
      const upstreamBase = options.fhirUpstream.replace(/\/+$/, '');
      const rewrite = (text: string) => text.split(upstreamBase).join(urls().fhirBaseUrl);
      const headers: Record<string, string> = {};
      for (const name of [
        'content-type',
        'location',
        'content-location',
        'etag',
        'last-modified',
        'retry-after',
      ]) {
        const value = forwarded.headers.get(name);
        if (value) headers[name] = rewrite(value);
      }
      response.writeHead(forwarded.status, headers);
      const payload = Buffer.from(await forwarded.arrayBuffer());
      response.end(/json/.test(headers['content-type'] ?? '') ? rewrite(payload.toString('utf8')) : payload);
      return;
    }
    sendJson(response, 200, { resourceType: 'Bundle', type: 'searchset', total: 0, entry: [] });
  }

  const server: Server = createServer((request, response) => {
    const url = new URL(request.url ?? '/', origin);
    const route = async () => {
      if (url.pathname === `${fhirBasePath}/.well-known/smart-configuration`) {
        return sendJson(response, 200, smartConfiguration());
      }
      if (url.pathname === '/auth/jwks') return sendJson(response, 200, serverJwks);
      if (url.pathname === '/auth/token') return tokenEndpoint(request, response);
      if (url.pathname === '/auth/authorize') return authorizeEndpoint(url, response);
      if (url.pathname === fhirBasePath || url.pathname.startsWith(`${fhirBasePath}/`)) {
        return fhirEndpoint(request, response, url);
      }
      sendJson(response, 404, { error: 'not_found' });
    };
    route().catch((error: Error) => {
      if (!response.headersSent)
        sendJson(response, 500, { error: 'server_error', error_description: error.message });
      else response.destroy(error);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  origin = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;

  return {
    url: origin,
    ...urls(),
    misbehave,
    tokenRequests,
    fhirRequests,
    registerClient: (client) => {
      clients.set(client.clientId, client);
    },
    createLaunch: (context) => {
      const launch = randomId();
      launches.set(launch, context);
      return launch;
    },
    setStandaloneContext: (context) => {
      standaloneContext = context;
    },
    revokeAllAccessTokens: () => accessTokens.clear(),
    revokeAllRefreshTokens: () => refreshTokens.clear(),
    checkBearer,
    close: () =>
      new Promise<void>((resolve, reject) => {
        server.closeAllConnections();
        server.close((error) => (error ? reject(error) : resolve()));
      }),
  };
}
