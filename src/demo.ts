import type { DocumentReference, Encounter, Patient } from 'fhir/r4.js';
import { citationsIn } from '../agents/citation-verifier.ts';
import { FhirClient } from '../fhir/fhir-client.ts';
import { decodeBase64Text } from '../fhir/note-text.ts';

/**
 * `npm run demo`: against the service that `npm start` runs (same PORT), finish a new encounter for a
 * sandbox patient, wait for the draft the service writes, and print it with its citations.
 * Exits non-zero when no draft appears within 60 seconds.
 */
const port = process.env.PORT ?? '3000';
const serviceUrl = (process.env.DEMO_SERVICE_URL ?? `http://127.0.0.1:${port}`).replace(/\/$/, '');
const fhir = new FhirClient({ baseUrl: `${serviceUrl}/sandbox/fhir`, maxAttempts: 2, timeoutMs: 10_000 });
const deadline = Date.now() + 60_000;

function fail(message: string): never {
  console.error(`demo: ${message}`);
  process.exit(1);
}

const health = await fetch(`${serviceUrl}/readyz`).catch(() => undefined);
if (!health?.ok) fail(`the service is not running at ${serviceUrl} (start it with \`npm start\` first)`);

const [patient] = await fhir.search<Patient>('Patient', { _count: 1 });
if (!patient) fail('the sandbox has no patients');

const now = new Date();
const { resource: encounter } = await fhir.create<Encounter>({
  resourceType: 'Encounter',
  status: 'finished',
  class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB', display: 'ambulatory' },
  type: [{ text: 'Follow-up visit (demo)' }],
  subject: { reference: `Patient/${patient.id}` },
  period: { start: new Date(now.getTime() - 30 * 60_000).toISOString(), end: now.toISOString() },
});
console.log(`demo: finished Encounter/${encounter.id} for Patient/${patient.id}; waiting for the draft...`);

let draft: DocumentReference | undefined;
while (!draft && Date.now() < deadline) {
  await new Promise((resolve) => setTimeout(resolve, 500));
  const drafts = await fhir.search<DocumentReference>('DocumentReference', {
    encounter: `Encounter/${encounter.id}`,
    type: 'http://loinc.org|34133-9',
  });
  draft = drafts.find((document) => document.docStatus === 'preliminary');
}
if (!draft)
  fail(
    'no draft appeared within 60 s; see the service log (`GET /api/jobs?status=failed` lists failed jobs)',
  );

const attachment = draft.content[0].attachment;
const text = decodeBase64Text(attachment.data ?? '', attachment.contentType);
console.log(`\nDocumentReference/${draft.id} (status ${draft.status}, docStatus ${draft.docStatus})\n`);
console.log(text);
const citations = [...new Set(citationsIn(text))];
console.log(
  `\n${citations.length} distinct citations: ${citations.slice(0, 12).join(', ')}${citations.length > 12 ? ', ...' : ''}`,
);
process.exit(0);
