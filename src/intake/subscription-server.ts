import path from 'node:path';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { IntakeConfig } from '../config/intake-config.ts';
import { readOrCreateSecretFile } from '../config/operator-secrets.ts';
import type { SubscriptionSpec } from './subscription-manager.ts';

/**
 * Which Subscription a server gets. Medplum stores a `requested` classic Subscription and never
 * delivers it, and stores topic-based ones without delivering them either; it is recognised from its
 * CapabilityStatement (`software.name`), or named in configuration when the statement says nothing.
 * Its subscription secret is generated once into the data directory, so the service and the CLI sign
 * the same Subscription with the same key, across restarts, without anyone configuring it.
 */
export type SubscriptionServer = 'medplum' | 'generic';

export const medplumSecretFileName = 'medplum-subscription-secret';

export async function recogniseSubscriptionServer(
  fhir: Pick<FhirClient, 'capabilities'>,
  configured: IntakeConfig['subscription']['server'],
): Promise<SubscriptionServer> {
  if (configured !== 'auto') return configured;
  const statement = await fhir.capabilities();
  return /medplum/i.test(statement?.software?.name ?? '') ? 'medplum' : 'generic';
}

/**
 * The Medplum subscription secret: the configured one (shared by replicas without a common data directory),
 * else the one kept in the data directory (mode 0600), made on first use.
 */
export function medplumSubscriptionSecret(dataDir: string, configured?: string): string {
  return configured ?? readOrCreateSecretFile(path.join(dataDir, medplumSecretFileName));
}

/** What the service's Subscription should look like on this server, from configuration. */
export async function subscriptionSpecFor(
  fhir: Pick<FhirClient, 'capabilities'>,
  config: IntakeConfig['subscription'],
  options: {
    endpoint: string;
    secret: string | undefined;
    dataDir: string;
    declareProfiles?: boolean;
    /** intake.medplumSubscriptionSecret, when the site sets it. */
    medplumSecret?: string;
  },
): Promise<SubscriptionSpec> {
  const server = await recogniseSubscriptionServer(fhir, config.server);
  return {
    endpoint: options.endpoint,
    mode: server === 'medplum' ? 'classic' : config.mode,
    topic: config.topic,
    criteria: config.criteria,
    payload: config.payload,
    heartbeatSeconds: config.heartbeatSeconds,
    secret: options.secret,
    server,
    ...(options.declareProfiles === false ? { declareProfiles: false } : {}),
    ...(server === 'medplum'
      ? { medplumSecret: medplumSubscriptionSecret(options.dataDir, options.medplumSecret) }
      : {}),
  };
}
