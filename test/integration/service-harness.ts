import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Bundle, DocumentReference, Encounter, Parameters } from 'fhir/r4.js';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import { type RunningService, startService } from '../../src/service.ts';

/** Starts the real service in sandbox mode on an ephemeral port with its own data directory. */
export async function startSandboxService(env: Record<string, string> = {}): Promise<{
  service: RunningService;
  fhir: FhirClient;
}> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'service-test-'));
  const config = loadConfig({
    env: {
      PORT: '0',
      DATA_DIR: dataDir,
      EHR_AGENT_SANDBOX__PATIENTS: '3',
      EHR_AGENT_QUEUE__POLL_INTERVAL_MS: '50',
      EHR_AGENT_QUEUE__BACKOFF_BASE_MS: '50',
      ...env,
    },
    cwd: dataDir,
  });
  const service = await startService(config, silentLogger());
  return { service, fhir: new FhirClient({ baseUrl: service.fhirBaseUrl }) };
}

/** A notification shaped like the Backport IG's id-only R4 example, for one encounter. */
export function idOnlyNotification(fhirBaseUrl: string, encounterId: string, eventNumber: number): Bundle {
  const status: Parameters = {
    resourceType: 'Parameters',
    parameter: [
      { name: 'subscription', valueReference: { reference: `${fhirBaseUrl}/Subscription/test-harness` } },
      { name: 'topic', valueCanonical: 'http://hl7.org/SubscriptionTopic/encounter-finished' },
      { name: 'status', valueCode: 'active' },
      { name: 'type', valueCode: 'event-notification' },
      { name: 'events-since-subscription-start', valueString: String(eventNumber) },
      {
        name: 'notification-event',
        part: [
          { name: 'event-number', valueString: String(eventNumber) },
          { name: 'timestamp', valueInstant: new Date().toISOString() },
          { name: 'focus', valueReference: { reference: `${fhirBaseUrl}/Encounter/${encounterId}` } },
        ],
      },
    ],
  };
  return {
    resourceType: 'Bundle',
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: [
      {
        fullUrl: 'urn:uuid:292d3c72-edc1-4d8a-afaa-d85e19c7f563',
        resource: status,
        request: { method: 'GET', url: `${fhirBaseUrl}/Subscription/test-harness/$status` },
        response: { status: '200' },
      },
    ],
  };
}

export async function postNotification(service: RunningService, bundle: Bundle): Promise<Response> {
  return fetch(`${service.url}/notify`, {
    method: 'POST',
    headers: { 'Content-Type': 'application/fhir+json', Authorization: `Bearer ${service.notifySecret}` },
    body: JSON.stringify(bundle),
  });
}

/** Waits until the queue has nothing pending or running (the work is done, or dead-lettered). */
export async function waitForIdleQueue(service: RunningService, timeoutMs = 60_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const counts = await service.queue.counts();
    if (counts.pending === 0 && counts.running === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  throw new Error(`queue still busy after ${timeoutMs} ms: ${JSON.stringify(await service.queue.counts())}`);
}

export async function draftsFor(fhir: FhirClient, encounterId: string): Promise<DocumentReference[]> {
  const documents = await fhir.search<DocumentReference>('DocumentReference', {
    encounter: `Encounter/${encounterId}`,
  });
  return documents.filter((document) => document.type?.coding?.some((coding) => coding.code === '34133-9'));
}

export function finishedEncounter(patientId: string, id: string): Encounter {
  const end = new Date();
  return {
    resourceType: 'Encounter',
    id,
    meta: { versionId: '1', lastUpdated: end.toISOString() },
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    type: [{ text: 'Office visit' }],
    subject: { reference: `Patient/${patientId}` },
    period: { start: new Date(end.getTime() - 20 * 60_000).toISOString(), end: end.toISOString() },
  };
}
