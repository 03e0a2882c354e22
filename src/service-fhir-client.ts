import path from 'node:path';
import { FhirClient } from '../fhir/fhir-client.ts';
import { type AccessTokenProvider, createAccessTokenProvider } from '../fhir/smart-backend-auth.ts';
import type { ServiceConfig } from './config/config-schema.ts';

/**
 * The service's own FHIR access, built one way for the service and for every CLI that talks to the same
 * server: the configured base, timeouts and caps, and the configured authentication (SMART Backend Services
 * with the key in the data directory, a static token, or none). A CLI built otherwise answered
 * "Unauthorized" under smart-backend, since it sent no token at all.
 */
export async function createServiceFhirClient(
  config: ServiceConfig,
  options: { fhirBaseUrl: string },
): Promise<{ fhir: FhirClient; accessToken: AccessTokenProvider }> {
  const accessToken = await createAccessTokenProvider(config.auth.backend, {
    fhirBaseUrl: options.fhirBaseUrl,
    dataDir: path.resolve(config.dataDir),
  });
  const fhir = new FhirClient({
    baseUrl: options.fhirBaseUrl,
    timeoutMs: config.fhir.timeoutMs,
    maxAttempts: config.fhir.maxAttempts,
    maxPages: config.fhir.maxPages,
    maxResponseBytes: config.fhir.maxResponseBytes,
    accessToken,
  });
  return { fhir, accessToken };
}
