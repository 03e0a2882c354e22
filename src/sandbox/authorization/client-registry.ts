import type { AdapterPayload } from 'oidc-provider';
import { outcomeError } from '../../../fhir/operation-outcome.ts';
import { missingScopes, parseClinicalScope } from '../../../fhir/smart-scopes.ts';

/**
 * The clients the sandbox's authorization server knows, registered the way an EHR administrator registers an app:
 * a Backend Services client with its keys (inline, or a JWKS URL read at token time), an App Launch client with
 * its exact redirect URIs (public: PKCE only; confidential: private_key_jwt as well), and the scopes each may get.
 */
export interface SandboxClientRegistration {
  clientId: string;
  /** Scopes the client may be granted: SMART clinical scopes (wildcards allowed) and openid, fhirUser, launch, ... */
  scopes: readonly string[];
  /** Public keys for private_key_jwt, registered inline. */
  jwks?: { keys: Record<string, unknown>[] };
  /** Where the client publishes its public keys; read when a token is requested, not at registration. */
  jwksUri?: string;
  /** App Launch: the redirect URIs, compared exactly. */
  redirectUris?: readonly string[];
}

/** Scopes that are not clinical: granted as they are, and known to the OpenID layer. */
export const launchScopes = [
  'openid',
  'fhirUser',
  'profile',
  'launch',
  'launch/patient',
  'launch/encounter',
  'online_access',
  'offline_access',
] as const;

const launchScopeSet = new Set<string>(launchScopes);

export interface RegisteredClient {
  registration: SandboxClientRegistration;
  /** What oidc-provider reads through its adapter. */
  metadata: AdapterPayload;
  clinicalScopes: string[];
}

export class ClientRegistry {
  readonly #clients = new Map<string, RegisteredClient>();

  register(registration: SandboxClientRegistration): RegisteredClient {
    if (!/^[\x21-\x7e]{1,200}$/.test(registration.clientId))
      throw outcomeError('invalid', 'client id must be 1-200 printable characters', 400);
    if (registration.jwks && registration.jwksUri)
      throw outcomeError('invalid', 'register keys inline (jwks) or by URL (jwksUri), not both', 400);
    const unknown = registration.scopes.filter(
      (scope) => !launchScopeSet.has(scope) && !parseClinicalScope(scope),
    );
    if (unknown.length > 0)
      throw outcomeError('invalid', `not SMART scopes this sandbox knows: ${unknown.join(' ')}`, 400);
    const hasKeys = Boolean(registration.jwks || registration.jwksUri);
    const redirectUris = [...(registration.redirectUris ?? [])];
    if (!hasKeys && redirectUris.length === 0)
      throw outcomeError(
        'invalid',
        'a client needs keys (Backend Services) or redirect URIs (App Launch)',
        400,
      );
    const grantTypes = [
      ...(redirectUris.length > 0 ? ['authorization_code', 'refresh_token'] : []),
      ...(hasKeys ? ['client_credentials'] : []),
    ];
    const statics = registration.scopes.filter((scope) => launchScopeSet.has(scope));
    const metadata: AdapterPayload = {
      client_id: registration.clientId,
      grant_types: grantTypes,
      response_types: redirectUris.length > 0 ? ['code'] : [],
      redirect_uris: redirectUris,
      token_endpoint_auth_method: hasKeys ? 'private_key_jwt' : 'none',
      ...(registration.jwks ? { jwks: registration.jwks } : {}),
      ...(registration.jwksUri ? { jwks_uri: registration.jwksUri } : {}),
      // oidc-provider checks requested OpenID scopes against this list; clinical scopes are checked by us.
      scope: statics.join(' ') || undefined,
    };
    const client: RegisteredClient = {
      registration: { ...registration, scopes: [...registration.scopes], redirectUris },
      metadata,
      clinicalScopes: registration.scopes.filter((scope) => !launchScopeSet.has(scope)),
    };
    this.#clients.set(registration.clientId, client);
    return client;
  }

  get(clientId: string): RegisteredClient | undefined {
    return this.#clients.get(clientId);
  }

  metadataFor(clientId: string): AdapterPayload | undefined {
    const metadata = this.#clients.get(clientId)?.metadata;
    // A copy: oidc-provider normalises what it reads.
    return metadata ? structuredClone(metadata) : undefined;
  }
}

/** The requested clinical scopes the registered ones cover, each exactly as asked: never widened, never invented. */
export function grantableClinicalScopes(
  requested: Iterable<string>,
  registered: readonly string[],
): string[] {
  return [...new Set(requested)].filter(
    (scope) => parseClinicalScope(scope) !== undefined && missingScopes([scope], registered).length === 0,
  );
}
