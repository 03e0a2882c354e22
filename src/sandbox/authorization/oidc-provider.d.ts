/**
 * The part of oidc-provider 9.x (which ships no type declarations) that the sandbox's authorization server uses.
 * Shapes follow the library's documentation and lib/ sources; members not used here are left out.
 */
declare module 'oidc-provider' {
  import type { IncomingMessage, ServerResponse } from 'node:http';

  export interface AdapterPayload {
    [key: string]: unknown;
    grantId?: string;
    uid?: string;
    userCode?: string;
    consumed?: number;
    jti?: string;
  }

  export interface Adapter {
    upsert(id: string, payload: AdapterPayload, expiresIn: number | undefined): Promise<void>;
    find(id: string): Promise<AdapterPayload | undefined>;
    findByUid(uid: string): Promise<AdapterPayload | undefined>;
    findByUserCode(userCode: string): Promise<AdapterPayload | undefined>;
    consume(id: string): Promise<void>;
    destroy(id: string): Promise<void>;
    revokeByGrantId(grantId: string): Promise<void>;
  }

  export interface Client {
    clientId: string;
    scope?: string;
    grantTypeAllowed(grantType: string): boolean;
  }

  export interface Grant {
    jti: string;
    accountId: string;
    clientId: string;
    addOIDCScope(scope: string): void;
    rejectOIDCScope(scope: string): void;
    addResourceScope(resource: string, scope: string): void;
    getOIDCScopeFiltered(filter: Set<string>): string;
    save(ttl?: number): Promise<string>;
  }

  export interface GrantModel {
    new (properties: { accountId: string; clientId: string }): Grant;
    find(id: string): Promise<Grant | undefined>;
  }

  /** An access token (authorization code or refresh grant) or a client-credentials token. */
  export interface IssuedToken {
    jti: string;
    clientId: string;
    scope?: string;
    scopes: Set<string>;
    grantId?: string;
    accountId?: string;
    aud?: string | string[];
    gty?: string;
    isExpired: boolean;
  }

  export interface TokenModel {
    find(value: string): Promise<IssuedToken | undefined>;
  }

  export interface GrantSource {
    scope?: string;
    scopes: Set<string>;
    grantId: string;
  }

  export interface OIDCContext {
    route: string;
    params: Record<string, string | undefined>;
    client?: Client;
    issuer: string;
    requestParamScopes: Set<string>;
    entities: {
      Grant?: Grant;
      AuthorizationCode?: GrantSource;
      RefreshToken?: GrantSource;
      AccessToken?: IssuedToken;
      ClientCredentials?: IssuedToken;
    };
  }

  export interface KoaContextWithOIDC {
    oidc: OIDCContext;
    method: string;
    path: string;
    status: number;
    body: unknown;
    query: Record<string, string | string[] | undefined>;
    querystring: string;
    state: Record<string, unknown>;
  }

  export type Middleware = (context: KoaContextWithOIDC, next: () => Promise<void>) => Promise<void>;

  export interface InteractionDetails {
    uid: string;
    prompt: { name: string; details: Record<string, unknown> };
    params: Record<string, string | undefined>;
    session?: { accountId: string };
  }

  export interface Account {
    accountId: string;
    claims(use: string, scope: string): Promise<Record<string, unknown>> | Record<string, unknown>;
  }

  export class Provider {
    constructor(issuer: string, configuration: Record<string, unknown>);
    proxy: boolean;
    readonly issuer: string;
    readonly Grant: GrantModel;
    readonly AccessToken: TokenModel;
    readonly ClientCredentials: TokenModel;
    readonly Client: { find(id: string): Promise<Client | undefined> };
    callback(): (request: IncomingMessage, response: ServerResponse) => void;
    use(middleware: Middleware): this;
    on(event: string, listener: (context: KoaContextWithOIDC, error: OIDCProviderError) => void): this;
    interactionDetails(request: IncomingMessage, response: ServerResponse): Promise<InteractionDetails>;
    interactionFinished(
      request: IncomingMessage,
      response: ServerResponse,
      result: Record<string, unknown>,
      options?: { mergeWithLastSubmission?: boolean },
    ): Promise<void>;
  }

  export class OIDCProviderError extends Error {
    error: string;
    error_description?: string;
    error_detail?: string;
    status: number;
  }

  export const errors: {
    InvalidClientAuth: new (detail: string) => OIDCProviderError;
    InvalidRequest: new (description: string) => OIDCProviderError;
    InvalidScope: new (description: string, scope?: string) => OIDCProviderError;
    InvalidTarget: new (description?: string) => OIDCProviderError;
    AccessDenied: new (description: string) => OIDCProviderError;
  };

  export default Provider;
}
