import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Encounter, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createDraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import { type DraftContent, DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { editRate, sectionsOf, signedReport } from '../../src/eval/signed-drafts.ts';
import { startEmbeddedSandbox } from '../../src/eval/sources.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { repoRoot } from '../support/shared-fixtures.ts';

/**
 * `eval signed` against drafts written, edited, signed and rejected through the service's own writer and
 * lifecycle (write mode) in the embedded sandbox: what it reports comes from the EHR's versions and
 * Provenance, as a site's would.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const practitioner = 'Practitioner/pr-eval';
let served: Awaited<ReturnType<typeof startEmbeddedSandbox>>;
let directory: string;
let fhir: FhirClient;
// Each patient has notes of their own: only the service's drafts may be counted.
const patients = generatePatients({ count: 3, seed: 7, maxNotesPerPatient: 3 });

function contentFor(patientIndex: number): DraftContent {
  const resources = patients[patientIndex].resources;
  const condition = resources.find((resource) => resource.resourceType === 'Condition');
  const reference = `Condition/${condition?.id}`;
  return {
    kind: 'progress-summary',
    title: 'Progress note summary (AI draft, needs review)',
    text: [
      '## Assessment and problems',
      `- Problem one is stable. [${reference}]`,
      '',
      '## Plan and follow-up',
      `- Recheck in three months. [${reference}]`,
      '',
      '## Suggested actions',
      `- Order an HbA1c (ADA; rule hba1c-overdue v2) [${reference}]`,
    ].join('\n'),
    engine: { id: 'extractive', version: '1' },
    sources: new Map([[reference, condition?.meta?.versionId]]),
    verification: { cited: 1, removed: 0, flagged: false },
    rules: [{ id: 'hba1c-overdue', version: '2' }],
  };
}

function patientAndEncounter(patientIndex: number): { patient: Patient; encounter: Encounter } {
  const resources = patients[patientIndex].resources;
  return {
    patient: resources[0] as Patient,
    encounter: resources.find(
      (resource) => resource.resourceType === 'Encounter' && resource.status === 'finished',
    ) as Encounter,
  };
}

beforeAll(async () => {
  served = await startEmbeddedSandbox((sandbox) =>
    sandbox.seed(patients.flatMap((patient) => patient.resources)),
  );
  fhir = new FhirClient({ baseUrl: served.baseUrl });
  directory = mkdtempSync(path.join(tmpdir(), 'eval-signed-'));
  const store = new SqliteDraftStore(path.join(directory, 'drafts.sqlite'));
  const writer = new DraftNoteWriter(fhir, identifierSystem, { mode: 'write', store });
  const lifecycle = createDraftLifecycle({
    mode: 'write',
    identifierSystem,
    store,
    client: fhir,
    serviceClient: fhir,
    requestRegeneration: () => undefined,
  });
  const ids: string[] = [];
  for (const index of [0, 1, 2]) {
    const { patient, encounter } = patientAndEncounter(index);
    const written = await writer.write(contentFor(index), patient, encounter);
    ids.push(written.draft.id as string);
  }
  // Patient 0: signed as drafted. Patient 1: the plan rewritten and the nudge deleted, then signed. Patient 2: rejected.
  await lifecycle.signDraft(ids[0], { practitioner });
  const draft = await lifecycle.getDraft(ids[1]);
  const edited = (draft?.text ?? '')
    .replace(
      'Recheck in three months.',
      'Recheck renal function and potassium in two weeks after the dose change.',
    )
    .split('\n')
    .filter((line) => !line.includes('rule hba1c-overdue'))
    .join('\n');
  await lifecycle.editDraft(ids[1], edited, { practitioner });
  await lifecycle.signDraft(ids[1], { practitioner });
  await lifecycle.rejectDraft(ids[2], { practitioner, reason: 'Summary of the wrong visit' });
}, 60_000);

afterAll(async () => {
  await served?.close();
  if (directory) rmSync(directory, { recursive: true, force: true });
});

describe('eval signed', () => {
  it('reports edits per section, rejection reasons and nudge outcomes per rule version from the EHR', async () => {
    const report = await signedReport(fhir, { identifierSystem, source: 'test' });
    expect(report.drafts).toEqual({ total: 3, signed: 2, rejected: 1, open: 0 });
    const plan = report.sections.find((entry) => entry.section === 'Plan and follow-up');
    const problems = report.sections.find((entry) => entry.section === 'Assessment and problems');
    // One draft of two had its plan rewritten; nobody touched the problems.
    expect(plan?.drafts).toBe(2);
    expect(plan?.meanEditRate).toBeGreaterThan(0.3);
    expect(problems?.meanEditRate).toBe(0);
    // The sign-off's own heading note is the service's, not the clinician's: not counted as an edit.
    expect(report.sections.find((entry) => entry.section === '(opening)')?.meanEditRate ?? 0).toBe(0);
    expect(report.rejectionReasons).toEqual([{ reason: 'Summary of the wrong visit', count: 1 }]);
    expect(report.nudges).toEqual([
      {
        ruleId: 'hba1c-overdue',
        ruleVersion: '2',
        delivered: 3,
        accepted: 1,
        ignored: 1,
        overridden: 1,
        acceptance: 0.3333,
      },
    ]);
  });

  it('runs as npm run eval -- signed, writing signed.md and signed.json', async () => {
    const out = path.join(directory, 'report');
    // Asynchronously: the sandbox answering the child's requests lives in this process.
    const stdout = await new Promise<string>((resolve, reject) =>
      execFile(
        process.execPath,
        [path.join(repoRoot, 'src/cli/eval.ts'), 'signed', '--fhir-base', served.baseUrl, '--out', out],
        { cwd: repoRoot, timeout: 120_000 },
        (error, output, errors) =>
          error ? reject(new Error(`${error.message}\n${errors}`)) : resolve(output),
      ),
    );
    expect(stdout).toContain('signed 2, rejected 1');
    const report = JSON.parse(readFileSync(path.join(out, 'signed.json'), 'utf8'));
    expect(report.drafts.signed).toBe(2);
    expect(readFileSync(path.join(out, 'signed.md'), 'utf8')).toContain('| Plan and follow-up | 2 |');
  }, 120_000);

  it('measures edits in words, over the longer text', () => {
    expect(editRate('a b c d', 'a b c d')).toBe(0);
    expect(editRate('a b c d', 'a x c d')).toBe(0.25);
    expect(editRate('', 'a b')).toBe(1);
    const sections = sectionsOf('## Plan (AI draft - not final)\n- one\nResults:\n- two');
    expect([...sections.entries()]).toEqual([
      ['Plan', '- one'],
      ['Results', '- two'],
    ]);
  });
});
