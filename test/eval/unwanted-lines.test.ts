import type { Condition, Encounter, MedicationRequest, Observation } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { applyContentPolicy, defaultContentPolicy } from '../../agents/clinical-content-policy.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { recordResources } from '../../fhir/patient-record.ts';
import { recordAsOfVisit } from '../../fhir/record-as-of-visit.ts';
import { aggregate } from '../../src/eval/aggregate.ts';
import { parseConfiguration } from '../../src/eval/configurations.ts';
import { runEvaluation } from '../../src/eval/run-eval.ts';
import { notesCited, type UnwantedLines, unwantedLines } from '../../src/eval/unwanted-lines.ts';
import { silentLogger } from '../../src/log.ts';
import { draftVerified, recordsForDraft } from '../../src/pipeline/process-encounter-job.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import { loadSyntheaPatients } from '../support/synthea-records.ts';

/**
 * Issue 19, item 8: the evaluation counts the lines a draft should not hold (dated after the visit, social
 * findings as problems, duplicates, sensitive findings against the policy) and the notes each draft cites.
 */
const snomed = 'http://snomed.info/sct';
const subject = { reference: 'Patient/p1' };
const now = new Date('2026-12-01T00:00:00Z');

function condition(id: string, code: string, display: string, onset: string): Condition {
  return {
    resourceType: 'Condition',
    id,
    subject,
    clinicalStatus: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }],
    },
    code: { coding: [{ system: snomed, code, display }], text: display },
    onsetDateTime: onset,
  };
}

function hba1c(id: string, date: string, value: number): Observation {
  return {
    resourceType: 'Observation',
    id,
    subject,
    status: 'final',
    code: { coding: [{ system: 'http://loinc.org', code: '4548-4', display: 'Hemoglobin A1c' }] },
    effectiveDateTime: date,
    valueQuantity: { value, unit: '%' },
  };
}

/** The record as retrieved: the visit of 2025-01-08, and a result from June 2025 (after it). */
function retrievedRecord(): PatientRecord {
  const built = buildPatientRecord({ patientId: 'p1', noteCount: 2, observationCount: 0 });
  const metformin = built.medications[0];
  const metforminAgain: MedicationRequest = { ...metformin, id: 'med-again', authoredOn: '2024-11-01' };
  return {
    ...built,
    conditions: [
      ...built.conditions,
      condition('bmi-30', '162864005', 'Body mass index 30+ - obesity (finding)', '2024-02-01'),
      condition('bmi-40', '408512008', 'Body mass index 40+ - severely obese (finding)', '2024-10-01'),
      condition('prediabetes', '15777000', 'Prediabetes (finding)', '2019-01-01'),
      condition('employment', '160903007', 'Full-time employment (finding)', '2024-05-01'),
      condition('partner-abuse', '706893006', 'Victim of intimate partner abuse (finding)', '2024-06-01'),
    ],
    medications: [...built.medications, metforminAgain],
    observations: [hba1c('a1c-before', '2025-01-05', 7.1), hba1c('a1c-after', '2025-06-01', 8.2)],
  };
}

const headings = [
  'Active problems:',
  'Social history:',
  'Medications:',
  'Recent results:',
  'Suggested actions:',
];

const cleanDraft = [
  '## Progress summary of the visit of 2025-01-08 [Encounter/enc-2] (AI draft - not final until signed by a clinician)',
  '',
  'Active problems:',
  '- Diabetes mellitus type 2 (since 2023-11-28) [Condition/cond-1]',
  '- Hypertension (since 2023-12-28) [Condition/cond-2]',
  '- Body mass index 40+ - severely obese (since 2024-10-01) [Condition/bmi-40]',
  '- 1 finding left out by site policy [Patient/p1]',
  '',
  'Social history:',
  '- Full-time employment (since 2024-05-01) [Condition/employment]',
  '',
  'Medications:',
  '- Metformin 500 MG Oral Tablet [MedicationRequest/med-1]',
  '- Lisinopril 10 MG Oral Tablet [MedicationRequest/med-2]',
  '',
  'Recent results:',
  '- Hemoglobin A1c 7.1 % on 2025-01-05 [Observation/a1c-before]',
  '- 2025-01-08: Plan: continue metformin [DocumentReference/note-2]',
  '- 2025-01-01: Plan: recheck A1c [DocumentReference/note-1]',
  '',
  'Suggested actions:',
  '- Screen with the PHQ-2 for depression at this visit. (USPSTF; rule depression-screening v1.0.0) [Patient/p1]',
];

/** The clean draft with one line added at the end of a section. */
function withLine(section: string, line: string): string {
  const lines = [...cleanDraft];
  const start = lines.indexOf(section);
  let end = start + 1;
  while (end < lines.length && lines[end] !== '') end += 1;
  lines.splice(end, 0, line);
  return lines.join('\n');
}

function counted(text: string, retrieved = retrievedRecord()): UnwantedLines {
  return unwantedLines({ retrieved, text, headings, now });
}

const none: UnwantedLines = {
  afterEncounter: 0,
  socialAsProblem: 0,
  duplicates: 0,
  sensitiveAgainstPolicy: 0,
};

describe('unwanted lines in a draft', () => {
  it('finds none in a clean draft (a suggested action may name a screening topic)', () => {
    expect(counted(cleanDraft.join('\n'))).toEqual(none);
    expect(notesCited(cleanDraft.join('\n'))).toBe(2);
  });

  it('counts a line citing a resource dated after the visit, judged against the whole retrieved record', () => {
    const text = withLine('Recent results:', '- Hemoglobin A1c 8.2 % on 2025-06-01 [Observation/a1c-after]');
    expect(counted(text)).toEqual({ ...none, afterEncounter: 1 });
  });

  it('counts a social finding listed under the problems, not under social history', () => {
    const text = withLine(
      'Active problems:',
      '- Full-time employment (since 2024-05-01) [Condition/employment]',
    );
    expect(counted(text)).toEqual({ ...none, socialAsProblem: 1, duplicates: 0 });
  });

  it('counts superseded findings shown together and the same finding or medication twice', () => {
    const bmi = withLine(
      'Active problems:',
      '- Body mass index 30+ - obesity (since 2024-02-01) [Condition/bmi-30]',
    );
    expect(counted(bmi)).toEqual({ ...none, duplicates: 1 });
    const prediabetes = withLine(
      'Active problems:',
      '- Prediabetes (since 2019-01-01) [Condition/prediabetes]',
    );
    expect(counted(prediabetes)).toEqual({ ...none, duplicates: 1 });
    const medication = withLine(
      'Medications:',
      '- Metformin 500 MG Oral Tablet, daily [MedicationRequest/med-again]',
    );
    expect(counted(medication)).toEqual({ ...none, duplicates: 1 });
    const repeated = withLine(
      'Recent results:',
      '- 2025-01-01: Plan: recheck A1c [DocumentReference/note-2]',
    );
    expect(counted(repeated)).toEqual({ ...none, duplicates: 1 });
  });

  it('counts a sensitive finding against the policy, cited or named', () => {
    const cited = withLine('Active problems:', '- A finding (since 2024-06-01) [Condition/partner-abuse]');
    expect(counted(cited)).toEqual({ ...none, sensitiveAgainstPolicy: 1 });
    const named = withLine(
      'Medications:',
      '- Alprazolam 0.5 MG as needed for anxiety [MedicationRequest/med-3]',
    );
    expect(counted(named)).toEqual({ ...none, sensitiveAgainstPolicy: 1 });
  });

  it('sums the counts per configuration and reports the notes cited per draft', () => {
    const draft = (patientId: string, unwanted: UnwantedLines, notes: number) => ({
      patientId,
      kind: 'progress-summary',
      score: {
        facts: [],
        statements: { checked: 0, supported: 0 },
        removedByVerifier: { 'no-citation': 0, 'unknown-citation': 0, 'other-patient': 0 },
        wrongPatientCitations: 0,
        wrongPatientCitationsWritten: 0,
        nudges: { expected: 0, present: 0, extra: 0 },
      },
      unwanted,
      notesCited: notes,
      fallback: false,
      usage: { modelCalls: 0, promptTokens: 0, completionTokens: 0 },
      seconds: 0,
    });
    const figures = aggregate('extractive', [
      draft('a', { ...none, afterEncounter: 1, duplicates: 2 }, 3),
      draft('b', { ...none, sensitiveAgainstPolicy: 1 }, 1),
    ]);
    expect(figures.unwantedLines).toEqual({
      afterEncounter: 1,
      socialAsProblem: 0,
      duplicates: 2,
      sensitiveAgainstPolicy: 1,
      total: 4,
    });
    expect(figures.notesSummarisedPerDraft.value).toBe(2);
  });
});

describe.skipIf(!sharedFixtures)('unwanted lines on the shared Synthea patients', () => {
  it('the extractive engine writes none for a visit in the middle of each history, and a leak would show', async () => {
    const patients = await loadSyntheaPatients(sharedFixtures as string);
    const engine = createExtractiveEngine();
    let drafted = 0;
    let laterResources = 0;
    let leakedLines = 0;
    for (const patient of patients) {
      const finished = patient.encounters
        .filter((encounter: Encounter) => encounter.status === 'finished')
        .sort((left, right) => (left.period?.start ?? '').localeCompare(right.period?.start ?? ''));
      const visit = finished[Math.floor(finished.length / 2)];
      if (!visit) continue;
      const retrieved = patient.recordFor(visit);
      const record = recordsForDraft(retrieved, 'progress-summary', {
        now,
        contentPolicy: defaultContentPolicy,
      })?.record;
      if (!record) continue;
      drafted += 1;
      laterResources +=
        recordResources(retrieved).length - recordResources(recordAsOfVisit(retrieved, now)).length;
      const { result, verification } = await draftVerified(
        engine,
        { kind: 'progress-summary', record, nudges: [] },
        silentLogger(),
      );
      expect(
        unwantedLines({ retrieved, text: verification.text, headings: result.headings, now }),
        `patient ${patient.id}`,
      ).toEqual(none);
      // The same draft made without the cut: what the measure is there to catch.
      const uncut = applyContentPolicy(retrieved, defaultContentPolicy);
      const leaked = await draftVerified(
        engine,
        { kind: 'progress-summary', record: uncut, nudges: [] },
        silentLogger(),
      );
      leakedLines += unwantedLines({
        retrieved,
        text: leaked.verification.text,
        headings: leaked.result.headings,
        now,
      }).afterEncounter;
    }
    expect(drafted).toBeGreaterThan(3);
    expect(laterResources).toBeGreaterThan(0);
    expect(leakedLines).toBeGreaterThan(0);
  }, 120_000);

  it('the evaluation reports 0 unwanted lines and the notes cited per draft for the extractive engine', async () => {
    const report = await runEvaluation({
      source: { kind: 'ndjson', folder: `${sharedFixtures}/synthea-r4`, patients: 1000 },
      configurations: [parseConfiguration('extractive')],
      logger: silentLogger(),
    });
    const [figures] = report.configurations;
    expect(figures.drafts).toBeGreaterThan(3);
    expect(figures.unwantedLines).toEqual({ ...none, total: 0 });
    expect(figures.notesSummarisedPerDraft.value).toBeGreaterThan(0);
  }, 120_000);
});
