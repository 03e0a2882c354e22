import { z } from 'zod';
import { outcomeError } from './operation-outcome.ts';

/**
 * Reads `<fhirBase>/.well-known/smart-configuration` (SMART App Launch 2.2, section "Conformance") and
 * checks that the endpoints it names are safe to send secrets to.
 */
export type FetchFunction = (input: string | URL, init?: RequestInit) => Promise<Response>;

const smartConfigurationSchema = z
  .object({
    issuer: z.string().optional(),
    jwks_uri: z.string().optional(),
    authorization_endpoint: z.string().optional(),
    token_endpoint: z.string().min(1),
    token_endpoint_auth_methods_supported: z.array(z.string()).optional(),
    token_endpoint_auth_signing_alg_values_supported: z.array(z.string()).optional(),
    grant_types_supported: z.array(z.string()).optional(),
    scopes_supported: z.array(z.string()).optional(),
    code_challenge_methods_supported: z.array(z.string()).optional(),
    capabilities: z.array(z.string()).optional(),
  })
  .loose();

export type SmartConfiguration = z.infer<typeof smartConfigurationSchema>;

const loopbackHosts = new Set(['localhost', '127.0.0.1', '[::1]']);

function isLoopbackUrl(url: URL): boolean {
  return loopbackHosts.has(url.hostname) || url.hostname.startsWith('127.');
}

/**
 * Endpoints that receive credentials (assertions, codes, tokens) must be https; plain http is accepted only on
 * the loopback interface, where nothing crosses a network.
 */
export function assertSafeEndpoint(value: string, what: string): URL {
  let url: URL;
  try {
    url = new URL(value);
  } catch {
    throw outcomeError('security', `${what} is not a valid URL: ${JSON.stringify(value).slice(0, 200)}`, 502);
  }
  if (url.protocol === 'https:') return url;
  if (url.protocol === 'http:' && isLoopbackUrl(url)) return url;
  throw outcomeError('security', `${what} ${url.origin} must use https (plain http only on loopback)`, 502);
}

export function smartConfigurationUrl(fhirBaseUrl: string): string {
  return `${fhirBaseUrl.replace(/\/+$/, '')}/.well-known/smart-configuration`;
}

export async function discoverSmartConfiguration(
  fhirBaseUrl: string,
  options: { fetch?: FetchFunction; timeoutMs?: number } = {},
): Promise<SmartConfiguration> {
  const fetchFunction = options.fetch ?? fetch;
  const url = smartConfigurationUrl(fhirBaseUrl);
  let response: Response;
  try {
    response = await fetchFunction(url, {
      headers: { accept: 'application/json' },
      redirect: 'error',
      signal: AbortSignal.timeout(options.timeoutMs ?? 10_000),
    });
  } catch (error) {
    throw outcomeError('transient', `SMART discovery at ${url} failed: ${(error as Error).message}`, 503);
  }
  if (!response.ok) {
    await response.body?.cancel();
    throw outcomeError(
      response.status >= 500 ? 'transient' : 'not-found',
      `SMART discovery at ${url} answered HTTP ${response.status}`,
      response.status >= 500 ? 503 : 502,
    );
  }
  let body: unknown;
  try {
    body = await response.json();
  } catch {
    throw outcomeError('invalid', `SMART discovery at ${url} did not return JSON`, 502);
  }
  const parsed = smartConfigurationSchema.safeParse(body);
  if (!parsed.success) {
    throw outcomeError(
      'invalid',
      `SMART discovery at ${url} is not a valid smart-configuration: ${parsed.error.issues[0]?.path.join('.')} ${parsed.error.issues[0]?.message}`,
      502,
    );
  }
  assertSafeEndpoint(parsed.data.token_endpoint, 'the discovered token endpoint');
  return parsed.data;
}
