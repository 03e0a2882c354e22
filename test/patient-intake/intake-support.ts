import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type {
  Communication,
  Condition,
  DocumentReference,
  Encounter,
  QuestionnaireResponse,
  Subscription,
} from 'fhir/r4.js';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import { invitationLink } from '../../src/patient-intake/invitations.ts';
import { loadFhirDefinitionsOnce } from '../../src/sandbox/fhir-definitions.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { draftsFor } from '../integration/service-harness.ts';

/** Helpers the intake suites share: a booked visit, its invitation, its answers and its briefing. */
export async function bookVisit(fhir: FhirClient, patientId: string): Promise<Encounter> {
  const start = new Date(Date.now() + 3 * 86_400_000);
  const created = await fhir.create<Encounter>({
    resourceType: 'Encounter',
    status: 'planned',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    type: [{ text: 'Office visit' }],
    subject: { reference: `Patient/${patientId}` },
    period: { start: start.toISOString(), end: new Date(start.getTime() + 20 * 60_000).toISOString() },
  });
  return created.resource;
}

export async function waitFor<T>(
  probe: () => Promise<T | undefined>,
  what: string,
  timeoutMs = 60_000,
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const found = await probe();
    if (found !== undefined) return found;
    await new Promise((resolve) => setTimeout(resolve, 150));
  }
  throw new Error(`timed out waiting for ${what}`);
}

export async function invitationFor(
  fhir: FhirClient,
  encounterId: string,
): Promise<Communication | undefined> {
  const [communication] = await fhir.search<Communication>('Communication', {
    encounter: `Encounter/${encounterId}`,
  });
  return communication;
}

export function linkOf(communication: Communication): string {
  const link = invitationLink(communication);
  if (!link) throw new Error('the invitation carries no link');
  return link;
}

export async function answersFor(
  fhir: FhirClient,
  encounterId: string,
): Promise<QuestionnaireResponse | undefined> {
  const [response] = await fhir.search<QuestionnaireResponse>('QuestionnaireResponse', {
    encounter: `Encounter/${encounterId}`,
  });
  return response;
}

/** The current (not superseded) briefing's text, once it cites `needle`. */
export async function briefingCiting(
  fhir: FhirClient,
  encounterId: string,
  needle: string,
): Promise<string | undefined> {
  const drafts: DocumentReference[] = await draftsFor(fhir, encounterId);
  for (const draft of drafts) {
    if (draft.status !== 'current') continue;
    const data = draft.content?.[0]?.attachment?.data;
    const text = data ? Buffer.from(data, 'base64').toString('utf8') : '';
    if (text.includes(needle)) return text;
  }
  return undefined;
}

/** A seeded patient whose record lists diabetes (the adaptive path's example), else the first. */
export async function patientWithDiabetes(fhir: FhirClient): Promise<string> {
  const conditions = await fhir.search<Condition>('Condition', { _count: 200 });
  const diabetic = conditions.find((condition) =>
    /diabetes/i.test(condition.code?.text ?? condition.code?.coding?.[0]?.display ?? ''),
  );
  const reference = diabetic?.subject?.reference;
  if (!reference) throw new Error('no seeded patient with diabetes');
  return reference.replace('Patient/', '');
}

/** The sandbox's generated intake secret (tests seal an expired link with it). */
export function sandboxIntakeSecret(dataDir: string): string {
  return readFileSync(path.join(dataDir, 'patient-intake-secret'), 'utf8').trim();
}

/** The real service in sandbox mode (intake on by default there), with its data folder at hand. */
export async function startIntakeService(
  env: Record<string, string> = {},
): Promise<{ service: RunningService; fhir: FhirClient; dataDir: string }> {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'patient-intake-test-'));
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
  const fhir = new FhirClient({ baseUrl: service.fhirBaseUrl });
  // A visit booked before the handshake made the Subscription active would raise no event.
  await waitFor(async () => {
    const subscriptions = await fhir.search<Subscription>('Subscription', {});
    return subscriptions.some((subscription) => subscription.status === 'active') ? true : undefined;
  }, 'the active Subscription');
  return { service, fhir, dataDir };
}

/** The FHIR R4 definitions, for validateResource. */
export function withFhirDefinitions(): void {
  loadFhirDefinitionsOnce();
}

/** The model-free interview answered over HTTP: a mild cough, no to the rest; later pages sent as they are. */
export async function answerByForm(link: string, concern = 'Cough for a week'): Promise<void> {
  const stateOf = (html: string) => /name="state" value="([^"]+)"/.exec(html)?.[1];
  const send = (fields: Record<string, string>) =>
    fetch(link, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams(fields).toString(),
    });
  const state = stateOf(await (await fetch(link)).text());
  if (!state) throw new Error('the interview page has no form state');
  let response = await send({
    state,
    'answer-concern': concern,
    'answer-onset': 'days',
    'answer-severity': 'mild',
    'answer-pain': 'no',
    'answer-takes-medicines': 'no',
    'answer-has-allergies': 'no',
    'answer-chest-pain': 'no',
    'answer-short-of-breath': 'no',
    'answer-self-harm': 'no',
  });
  for (let page = 0; page < 5 && response.status === 200; page++) {
    const next = stateOf(await response.text());
    if (!next) return;
    response = await send({ state: next });
  }
}
