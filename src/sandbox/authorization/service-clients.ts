import {
  type AuthConfig,
  backendAuthConfigSchema,
  defaultLaunchScopes,
  smartLaunchConfigSchema,
} from '../../config/auth-config.ts';
import type { SandboxAuthorizationServer } from './authorization-server.ts';

/**
 * The default run uses the hospital's path: the service registers itself with the sandbox's authorization server
 * as a Backend Services client (its JWKS URL, its generated key) and as the review app's launch client, the way a
 * site's EHR administrator registers it. Settings given explicitly are kept and registered as they are.
 */
export const sandboxBackendClientId = 'ehr-draft-agent';
export const sandboxReviewClientId = 'ehr-draft-agent-review';

export function registerServiceWithSandbox(
  authorization: Pick<SandboxAuthorizationServer, 'registerClient'>,
  options: {
    auth: AuthConfig;
    serviceUrl: string;
    fhirBaseUrl: string;
    /** Scopes the default review-app client needs besides the defaults (pre-visit intake's answers and flags). */
    extraLaunchScopes?: string[];
  },
): AuthConfig {
  const backend =
    options.auth.backend.mode === 'none'
      ? backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: sandboxBackendClientId })
      : options.auth.backend;
  if (backend.mode === 'smart-backend') {
    authorization.registerClient({
      clientId: backend.clientId,
      // Read by the sandbox when the service asks for a token, as Medplum and the SMART launcher do.
      jwksUri: `${options.serviceUrl}/.well-known/jwks.json`,
      scopes: backend.scopes,
    });
  }

  const plainHttp = new URL(options.serviceUrl).protocol === 'http:';
  const launch =
    options.auth.launch ??
    smartLaunchConfigSchema.parse({
      clientId: sandboxReviewClientId,
      allowedIssuers: [options.fhirBaseUrl],
      ...(options.extraLaunchScopes?.length
        ? { scopes: [...defaultLaunchScopes.split(' '), ...options.extraLaunchScopes] }
        : {}),
      // A plain-http tab on localhost: browsers drop Secure cookies there and refuse SameSite=None without Secure.
      cookie: plainHttp ? { secure: false, sameSite: 'lax', partitioned: false } : {},
    });
  const servesSandbox = launch.allowedIssuers.some(
    (issuer) => issuer.replace(/\/+$/, '') === options.fhirBaseUrl.replace(/\/+$/, ''),
  );
  if (servesSandbox) {
    const standaloneScopes =
      launch.standaloneScopes ??
      launch.scopes.map((scope) => (scope === 'launch' ? 'launch/patient' : scope));
    authorization.registerClient({
      clientId: launch.clientId,
      redirectUris: [launch.redirectUri ?? new URL('/smart/callback', options.serviceUrl).href],
      scopes: [...new Set([...launch.scopes, ...standaloneScopes])],
      ...(launch.clientAuthentication === 'private_key_jwt' && backend.mode === 'smart-backend'
        ? { jwksUri: `${options.serviceUrl}/.well-known/jwks.json` }
        : {}),
    });
  }
  return { backend, launch };
}
