import { randomBytes } from 'node:crypto';
import type { IncomingMessage, ServerResponse } from 'node:http';
import { exportJWK, generateKeyPair } from 'jose';
import type { Client, KoaContextWithOIDC, OIDCProviderError, Provider } from 'oidc-provider';
import type { Logger } from '../../log.ts';
import { clientAssertionProblem } from './client-assertion-policy.ts';
import {
  ClientRegistry,
  grantableClinicalScopes,
  launchScopes,
  type SandboxClientRegistration,
} from './client-registry.ts';
import { type LaunchContext, LaunchContexts } from './launch-contexts.ts';
import { createMemoryStorage } from './memory-storage.ts';
import type { TokenAccess } from './scope-enforcement.ts';

/**
 * The sandbox EHR's SMART authorization server: oidc-provider (a certified OpenID provider) configured the way
 * strict SMART servers behave, with SMART's launch context layered on through its extension points:
 * - Backend Services: client_credentials with private_key_jwt (ES384, RS384), keys inline or fetched from the
 *   client's JWKS URL on every token request (never cached), SMART's assertion rules (client-assertion-policy.ts), jti replay;
 * - App Launch: authorization code with PKCE S256 required, single-use codes, `aud` = the FHIR base, `launch`
 *   bound to a patient and encounter, `launch/patient` for standalone launch, openid fhirUser with an id_token
 *   signed by this server's published key, refresh tokens for online_access and offline_access;
 * - SMART v2 clinical scopes as the FHIR base's resource-server scopes: a token carries only the requested
 *   scopes the client's registration covers, never one that was not granted.
 * The EHR's sign-in and consent are automatic (the sandbox has one clinician and no consent screen).
 * oidc-provider is imported only when this is created, so a service against a real EHR never loads it.
 */
export interface SandboxAuthorizationServerOptions {
  /** Where this server is mounted, e.g. `http://127.0.0.1:3000/sandbox/auth`. */
  issuer: string;
  /** The FHIR base the tokens are for (their audience, and the `aud` an authorization request must name). */
  fhirBaseUrl: string;
  /** The clinician (Practitioner id) a launch signs in as when the launch names none. */
  defaultPractitioner: () => Promise<string | undefined>;
  /** The patient (and, when asked, an encounter) a standalone launch receives, as an EHR's patient picker would. */
  standaloneContext: (
    wantsEncounter: boolean,
  ) => Promise<{ patient: string; encounter?: string } | undefined>;
  /** Lifetime of tokens from App Launch (default one hour). */
  userTokenLifetimeSeconds?: number;
  /** Lifetime of Backend Services tokens (default five minutes, as SMART recommends). */
  backendTokenLifetimeSeconds?: number;
  logger?: Logger;
}

export interface SandboxAuthorizationServer {
  readonly issuer: string;
  readonly fhirBaseUrl: string;
  readonly authorizeUrl: string;
  readonly tokenUrl: string;
  readonly jwksUrl: string;
  /** Node's request handler, for a request whose `url` is relative to the issuer's path (as express mounts it). */
  handle(request: IncomingMessage, response: ServerResponse): void;
  /** `<fhirBase>/.well-known/smart-configuration`. */
  smartConfiguration(): Record<string, unknown>;
  registerClient(registration: SandboxClientRegistration): void;
  /** An EHR launch: an opaque `launch` value bound to this context. */
  createLaunch(context: LaunchContext): string;
  /** The access a bearer token grants on the FHIR base, or undefined when it is unknown, expired or for elsewhere. */
  verifyAccessToken(token: string): Promise<TokenAccess | undefined>;
}

const assertionAlgorithms = ['ES384', 'RS384'];
const keyLookupProperty = 'sandbox_key_lookup';
const interactionPathPattern = /^\/interaction\/([A-Za-z0-9_-]{1,100})\/?(?:\?.*)?$/;
const launchScopeSet = new Set<string>(launchScopes);

const escapeHtml = (text: string) => text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);

function isLoopbackHost(hostname: string): boolean {
  return hostname === 'localhost' || hostname === '[::1]' || /^127\./.test(hostname);
}

export async function createSandboxAuthorizationServer(
  options: SandboxAuthorizationServerOptions,
): Promise<SandboxAuthorizationServer> {
  const { default: ProviderClass, errors } = await import('oidc-provider');
  const issuer = options.issuer.replace(/\/+$/, '');
  const issuerPath = new URL(issuer).pathname.replace(/\/+$/, '');
  const fhirBaseUrl = options.fhirBaseUrl.replace(/\/+$/, '');
  const authorizeUrl = `${issuer}/authorize`;
  const tokenUrl = `${issuer}/token`;
  const jwksUrl = `${issuer}/jwks`;
  const userTokenLifetime = options.userTokenLifetimeSeconds ?? 3600;
  const backendTokenLifetime = options.backendTokenLifetimeSeconds ?? 300;
  const grantLifetime = 86_400;
  const clients = new ClientRegistry();
  const contexts = new LaunchContexts();

  const signing = await generateKeyPair('RS256', { extractable: true });
  const signingJwk = {
    ...(await exportJWK(signing.privateKey)),
    kid: `sandbox-${randomBytes(6).toString('hex')}`,
    alg: 'RS256',
    use: 'sig',
  };

  /** Every scope this request could be granted from: asked for now, or carried by the code or refresh token. */
  function candidateScopes(context: KoaContextWithOIDC): string[] {
    const { params, entities } = context.oidc;
    return [
      ...(params.scope ?? '').split(' '),
      ...(entities.AuthorizationCode?.scope ?? '').split(' '),
      ...(entities.RefreshToken?.scope ?? '').split(' '),
    ].filter(Boolean);
  }

  // oidc-provider keeps a client's keys from its JWKS URL for 60 s (longer with max-age), and a failed fetch for
  // as long, on the client object it builds once per distinct metadata. Strict servers (smart-launcher) fetch the
  // JWKS on every token request, so a client whose JWKS is gone or changed is refused at once: each read of a
  // JWKS-URL client carries a new lookup number, so oidc-provider builds a new client with an empty key store.
  let clientLookups = 0;
  function clientMetadata(clientId: string) {
    const metadata = clients.metadataFor(clientId);
    if (metadata?.jwks_uri) metadata[keyLookupProperty] = ++clientLookups;
    return metadata;
  }

  const configuration: Record<string, unknown> = {
    adapter: createMemoryStorage({ findClient: clientMetadata }),
    extraClientMetadata: { properties: [keyLookupProperty] },
    jwks: { keys: [signingJwk] },
    cookies: {
      keys: [randomBytes(32).toString('base64url')],
      long: { httpOnly: true, sameSite: 'lax' },
      short: { httpOnly: true, sameSite: 'lax' },
    },
    scopes: [...launchScopes],
    claims: { openid: ['sub'], fhirUser: ['fhirUser'], profile: ['name'] },
    // The fhirUser claim belongs in the id_token (SMART), not only behind a userinfo endpoint.
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      clientCredentials: { enabled: true },
      userinfo: { enabled: false },
      rpInitiatedLogout: { enabled: false },
      pushedAuthorizationRequests: { enabled: false },
      dPoP: { enabled: false },
      resourceIndicators: {
        enabled: true,
        // SMART clients name no `resource`: every token is for the FHIR base.
        defaultResource: async () => fhirBaseUrl,
        useGrantedResource: async () => true,
        getResourceServerInfo: async (context: KoaContextWithOIDC, indicator: string, client: Client) => {
          if (indicator.replace(/\/+$/, '') !== fhirBaseUrl)
            throw new errors.InvalidTarget('this server issues tokens for its FHIR base only');
          const registered = clients.get(client.clientId)?.clinicalScopes ?? [];
          const scope = grantableClinicalScopes(candidateScopes(context), registered);
          const backend = context.oidc.params.grant_type === 'client_credentials';
          if (backend && scope.length === 0) {
            throw new errors.InvalidScope(
              'none of the requested scopes is registered for this client',
              context.oidc.params.scope,
            );
          }
          return {
            scope: scope.join(' '),
            audience: fhirBaseUrl,
            accessTokenFormat: 'opaque',
            accessTokenTTL: backend ? backendTokenLifetime : userTokenLifetime,
          };
        },
      },
    },
    clientDefaults: {
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'none',
      id_token_signed_response_alg: 'RS256',
    },
    clientAuthMethods: ['private_key_jwt', 'none'],
    enabledJWA: { clientAuthSigningAlgValues: assertionAlgorithms },
    responseTypes: ['code'],
    pkce: { required: () => true },
    allowOmittingSingleRegisteredRedirectUri: false,
    clockTolerance: 5,
    extraParams: {
      // SMART: aud names the FHIR server the app wants a token for; a token for another server is refused.
      aud: async (_context: KoaContextWithOIDC, value: string | undefined) => {
        if (!value) throw new errors.InvalidRequest('aud is required: the FHIR base URL the app will use');
        if (value.replace(/\/+$/, '') !== fhirBaseUrl)
          throw new errors.InvalidRequest(`aud ${value} is not this server's FHIR base ${fhirBaseUrl}`);
      },
      launch: async (context: KoaContextWithOIDC, value: string | undefined) => {
        const scopes = (context.oidc.params.scope ?? '').split(' ');
        if (scopes.includes('launch') && !contexts.findLaunch(value))
          throw new errors.InvalidRequest('the launch parameter is missing, unknown or expired');
      },
    },
    routes: { authorization: '/authorize', token: '/token', jwks: '/jwks' },
    interactions: {
      url: async (_context: unknown, interaction: { uid: string }) =>
        `${issuerPath}/interaction/${interaction.uid}`,
    },
    // Every authorization passes through the interaction, so each launch binds its own context to a new grant.
    // (the grant just made there is the one a resumed request uses).
    loadExistingGrant: async (context: { oidc: { result?: { consent?: { grantId?: string } } } }) => {
      const grantId = context.oidc.result?.consent?.grantId;
      return grantId ? provider.Grant.find(grantId) : undefined;
    },
    findAccount: async (_context: unknown, practitionerId: string) => ({
      accountId: practitionerId,
      claims: () => ({ sub: practitionerId, fhirUser: `${fhirBaseUrl}/Practitioner/${practitionerId}` }),
    }),
    issueRefreshToken: async (_context: unknown, client: Client, source: { scopes: Set<string> }) =>
      client.grantTypeAllowed('refresh_token') &&
      (source.scopes.has('online_access') || source.scopes.has('offline_access')),
    expiresWithSession: async () => false,
    // Each use returns a new refresh token and retires the old one; a retired one presented again revokes the grant.
    rotateRefreshToken: true,
    assertJwtClientAuthClaimsAndHeader: async (
      _context: KoaContextWithOIDC,
      claims: Record<string, unknown>,
      header: Record<string, unknown>,
      client: Client,
    ) => {
      const problem = clientAssertionProblem(claims, header, {
        clientId: client.clientId,
        tokenUrl,
        nowSeconds: Math.floor(Date.now() / 1000),
      });
      if (problem) throw new errors.InvalidClientAuth(problem);
    },
    ttl: {
      AccessToken: userTokenLifetime,
      ClientCredentials: backendTokenLifetime,
      AuthorizationCode: 60,
      IdToken: 3600,
      RefreshToken: grantLifetime,
      Interaction: 600,
      Session: grantLifetime,
      Grant: grantLifetime,
    },
    renderError: async (context: { type: string; body: unknown }, out: Record<string, string>) => {
      context.type = 'html';
      context.body = `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox authorization</title></head><body><h1>${escapeHtml(out.error ?? 'error')}</h1><p>${escapeHtml(out.error_description ?? '')}</p></body></html>`;
    },
    // Browser apps exchange codes from their own origin.
    clientBasedCORS: () => true,
    // oidc-provider refuses to fetch JWKS URLs on special-use addresses (SSRF protection); the sandbox's own
    // clients publish theirs on loopback, so only loopback URLs bypass it.
    fetch: (url: string | URL, init: RequestInit & { dispatcher?: unknown }) =>
      isLoopbackHost(new URL(url).hostname)
        ? fetch(url, { ...init, dispatcher: undefined } as RequestInit)
        : fetch(url, init),
  };

  const provider: Provider = new ProviderClass(issuer, configuration);
  // Behind a reverse proxy, endpoint URLs follow X-Forwarded-*; the assertion's aud is still checked exactly.
  provider.proxy = true;

  // The token endpoint's refusals say why (oidc-provider keeps the detail out of the response by default): the
  // sandbox is where developers find out what their client sends wrong.
  provider.on('grant.error', (context, error: OIDCProviderError) => {
    const body = context.body as { error_description?: string } | undefined;
    if (body && error.error_detail && error.error === 'invalid_client')
      body.error_description = `${body.error_description ?? error.error}: ${error.error_detail}`;
  });
  provider.on('server_error', (_context, error) => {
    options.logger?.error({ error: error.message }, 'sandbox-authorization-server-error');
  });

  provider.use(async (context, next) => {
    // SMART grants offline_access without OpenID's prompt=consent; oidc-provider would drop the scope otherwise.
    if (context.method === 'GET' && context.path === '/authorize') {
      const scope = typeof context.query.scope === 'string' ? context.query.scope : '';
      if (scope.split(' ').includes('offline_access') && context.query.prompt === undefined)
        context.query = { ...context.query, prompt: 'consent' };
    }
    await next();
    if (context.oidc?.route !== 'token' || context.status !== 200) return;
    const body = context.body as Record<string, unknown>;
    const { Grant: grant, AuthorizationCode: code, RefreshToken: refreshToken } = context.oidc.entities;
    const source = code ?? refreshToken;
    if (!grant || !source || typeof body?.access_token !== 'string') return;
    // The token response names every granted scope, not only the FHIR ones oidc-provider puts there.
    const requested = context.oidc.params.scope ? context.oidc.requestParamScopes : source.scopes;
    const openidScopes = grant.getOIDCScopeFiltered(requested);
    body.scope = [openidScopes, body.scope].filter(Boolean).join(' ');
    const granted = new Set(openidScopes.split(' '));
    const launchContext = contexts.forGrant(grant.jti);
    if (launchContext?.patient && (granted.has('launch') || granted.has('launch/patient'))) {
      body.patient = launchContext.patient;
      body.need_patient_banner = true;
    }
    if (launchContext?.encounter && (granted.has('launch') || granted.has('launch/encounter')))
      body.encounter = launchContext.encounter;
  });

  const providerCallback = provider.callback();

  /** The EHR's sign-in and consent, done at once: the launch's clinician (or the default one) approves. */
  async function interaction(request: IncomingMessage, response: ServerResponse): Promise<void> {
    const details = await provider.interactionDetails(request, response);
    const finish = (result: Record<string, unknown>) =>
      provider.interactionFinished(request, response, result, { mergeWithLastSubmission: false });
    const clientId = details.params.client_id ?? '';
    const registered = clients.get(clientId);
    if (!registered) return finish({ error: 'access_denied', error_description: 'unknown client' });
    const requested = new Set((details.params.scope ?? '').split(' ').filter(Boolean));
    let launchContext: { patient?: string; encounter?: string; practitioner?: string } | undefined;
    if (requested.has('launch')) launchContext = contexts.findLaunch(details.params.launch);
    else if (requested.has('launch/patient'))
      launchContext = await options.standaloneContext(requested.has('launch/encounter'));
    if ((requested.has('launch') || requested.has('launch/patient')) && !launchContext?.patient)
      return finish({ error: 'access_denied', error_description: 'no patient could be put in context' });
    const practitioner = launchContext?.practitioner ?? (await options.defaultPractitioner());
    if (!practitioner)
      return finish({
        error: 'access_denied',
        error_description: 'the sandbox EHR has no clinician to sign in',
      });

    const grant = new provider.Grant({ accountId: practitioner, clientId });
    // oidc-provider has already refused OpenID-layer scopes the client is not registered for.
    const statics = [...requested].filter((scope) => launchScopeSet.has(scope));
    if (statics.length > 0) grant.addOIDCScope(statics.join(' '));
    const clinical = grantableClinicalScopes(requested, registered.clinicalScopes);
    if (clinical.length > 0) grant.addResourceScope(fhirBaseUrl, clinical.join(' '));
    const grantId = await grant.save(grantLifetime);
    contexts.bindGrant(
      grantId,
      {
        patient: launchContext?.patient,
        encounter:
          requested.has('launch') || requested.has('launch/encounter') ? launchContext?.encounter : undefined,
        fhirUser: `${fhirBaseUrl}/Practitioner/${practitioner}`,
      },
      grantLifetime,
    );
    options.logger?.info({ clientId, standalone: !requested.has('launch') }, 'sandbox-launch-authorized');
    await finish({ login: { accountId: practitioner }, consent: { grantId } });
  }

  function handle(request: IncomingMessage, response: ServerResponse): void {
    if (interactionPathPattern.test(request.url ?? '') && request.method === 'GET') {
      interaction(request, response).catch((error: Error) => {
        if (response.headersSent) return response.destroy(error);
        response.writeHead(400, { 'content-type': 'text/html; charset=utf-8', 'cache-control': 'no-store' });
        response.end(
          `<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Sandbox authorization</title></head><body><h1>Authorization could not continue</h1><p>${escapeHtml(error.message)}</p><p>Start the launch again from the app.</p></body></html>`,
        );
      });
      return;
    }
    providerCallback(request, response);
  }

  async function verifyAccessToken(value: string): Promise<TokenAccess | undefined> {
    if (!/^[\x21-\x7e]{1,2048}$/.test(value)) return undefined;
    const userToken = await provider.AccessToken.find(value);
    const token = userToken ?? (await provider.ClientCredentials.find(value));
    if (!token || token.isExpired) return undefined;
    const audiences = Array.isArray(token.aud) ? token.aud : [token.aud];
    if (!audiences.includes(fhirBaseUrl)) return undefined;
    const launchContext = userToken ? contexts.forGrant(token.grantId) : undefined;
    return {
      clientId: token.clientId,
      scopes: (token.scope ?? '').split(' ').filter(Boolean),
      patient: launchContext?.patient,
      encounter: launchContext?.encounter,
      fhirUser: launchContext?.fhirUser,
      backend: !userToken,
    };
  }

  return {
    issuer,
    fhirBaseUrl,
    authorizeUrl,
    tokenUrl,
    jwksUrl,
    handle,
    smartConfiguration: () => ({
      issuer,
      jwks_uri: jwksUrl,
      authorization_endpoint: authorizeUrl,
      token_endpoint: tokenUrl,
      token_endpoint_auth_methods_supported: ['private_key_jwt', 'none'],
      token_endpoint_auth_signing_alg_values_supported: assertionAlgorithms,
      grant_types_supported: ['authorization_code', 'client_credentials', 'refresh_token'],
      scopes_supported: [...launchScopes, 'patient/*.cruds', 'user/*.cruds', 'system/*.cruds'],
      response_types_supported: ['code'],
      code_challenge_methods_supported: ['S256'],
      capabilities: [
        'launch-ehr',
        'launch-standalone',
        'authorize-post',
        'client-public',
        'client-confidential-asymmetric',
        'context-ehr-patient',
        'context-ehr-encounter',
        'context-standalone-patient',
        'context-standalone-encounter',
        'sso-openid-connect',
        'permission-online',
        'permission-offline',
        'permission-patient',
        'permission-user',
        'permission-v2',
      ],
    }),
    registerClient: (registration) => {
      clients.register(registration);
    },
    createLaunch: (context) => contexts.createLaunch(context),
    verifyAccessToken,
  };
}
