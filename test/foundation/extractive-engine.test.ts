import type { Patient } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import { createExtractiveEngine, extractiveHeadings } from '../../agents/extractive-engine.ts';
import { clean } from '../../agents/record-lines.ts';
import { conceptText, labelText, oneLine, quantityText } from '../../agents/record-text.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';

const patient: Patient = { resourceType: 'Patient', id: 'p1', meta: { versionId: '1' } };

function record(): PatientRecord {
  return {
    patient,
    encounter: {
      resourceType: 'Encounter',
      id: 'e9',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: 'Patient/p1' },
      period: { start: '2026-11-20T10:00:00Z' },
      type: [{ text: 'Diabetes follow-up' }],
    },
    conditions: [
      {
        resourceType: 'Condition',
        id: 'c1',
        subject: { reference: 'Patient/p1' },
        code: { text: 'Type 2 diabetes mellitus' },
        clinicalStatus: { coding: [{ code: 'active' }] },
        onsetDateTime: '2015-04-01',
      },
      {
        resourceType: 'Condition',
        id: 'c2',
        subject: { reference: 'Patient/p1' },
        code: { text: 'Acute bronchitis' },
        clinicalStatus: { coding: [{ code: 'resolved' }] },
      },
    ],
    medications: [
      {
        resourceType: 'MedicationRequest',
        id: 'm1',
        status: 'active',
        intent: 'order',
        subject: { reference: 'Patient/p1' },
        medicationCodeableConcept: { text: 'Metformin 500 mg tablet' },
      },
      {
        resourceType: 'MedicationRequest',
        id: 'm2',
        status: 'stopped',
        intent: 'order',
        subject: { reference: 'Patient/p1' },
        medicationCodeableConcept: { text: 'Amoxicillin' },
      },
    ],
    allergies: [],
    observations: [
      {
        resourceType: 'Observation',
        id: 'o1',
        status: 'final',
        code: { text: 'Hemoglobin A1c' },
        subject: { reference: 'Patient/p1' },
        effectiveDateTime: '2026-05-01',
        valueQuantity: { value: 7.2, unit: '%' },
      },
      {
        resourceType: 'Observation',
        id: 'o2',
        status: 'final',
        code: { text: 'Hemoglobin A1c' },
        subject: { reference: 'Patient/p1' },
        effectiveDateTime: '2026-10-01',
        valueQuantity: { value: 8.1, unit: '%' },
      },
      {
        resourceType: 'Observation',
        id: 'o3',
        status: 'final',
        code: { coding: [{ code: '85354-9', display: 'Blood pressure panel' }] },
        subject: { reference: 'Patient/p1' },
        effectiveDateTime: '2026-10-01',
        component: [
          { code: { text: 'Systolic' }, valueQuantity: { value: 142, unit: 'mm[Hg]' } },
          { code: { text: 'Diastolic' }, valueQuantity: { value: 91, unit: 'mm[Hg]' } },
        ],
      },
    ],
    encounters: [],
    procedures: [],
    immunizations: [],
    noteResources: [
      {
        resourceType: 'DocumentReference',
        id: 'n1',
        status: 'current',
        content: [],
        subject: { reference: 'Patient/p1' },
      },
    ],
    notes: [
      {
        reference: 'DocumentReference/n1',
        id: 'n1',
        versionId: '1',
        date: '2026-10-01',
        title: 'Progress note',
        text: 'Subjective: feels tired.\nObjective: BP 142/91.\nAssessment: T2DM, above goal.\nPlan: increase metformin; recheck HbA1c in 3 months.',
      },
    ],
  };
}

describe('extractive draft engine', () => {
  it('summarises active problems, medications, latest results and the latest assessment and plan, all cited', async () => {
    const summarised = record();
    const result = await createExtractiveEngine().draft({
      kind: 'progress-summary',
      record: summarised,
      nudges: [],
    });
    expect(result.text).toContain('Type 2 diabetes mellitus (since 2015-04-01) [Condition/c1]');
    expect(result.text).not.toContain('Acute bronchitis');
    expect(result.text).toContain('Metformin 500 mg tablet [MedicationRequest/m1]');
    expect(result.text).not.toContain('Amoxicillin');
    expect(result.text).toContain('Hemoglobin A1c: 8.1 % on 2026-10-01 [Observation/o2]');
    expect(result.text).not.toContain('[Observation/o1]'); // only the latest result per code
    // Square brackets from the record are never a citation: the UCUM unit reads with parentheses.
    // UCUM's brackets are code, not text: the draft says mmHg, as a clinician writes it.
    expect(result.text).toContain('142/91 mmHg');
    expect(result.text).toContain(
      'T2DM, above goal. Plan: increase metformin; recheck HbA1c in 3 months. [DocumentReference/n1]',
    );
    expect(result.text).toContain('No allergies recorded in the retrieved record [Patient/p1]');
    expect(result.headings).toBe(extractiveHeadings['progress-summary']);
    const verification = verifyDraft(result, summarised);
    expect(verification.flagged).toBe(false);
    expect(verification.text).toBe(result.text);
    for (const citation of citationsIn(result.text)) expect(verification.cited).toContain(citation);
  });

  it('puts nudges under Suggested actions with guideline and evidence, and writes pre-visit briefings', async () => {
    const planned = { ...record(), encounter: { ...record().encounter, status: 'planned' as const } };
    const result = await createExtractiveEngine().draft({
      kind: 'previsit-briefing',
      record: planned,
      nudges: [
        {
          ruleId: 'bp-above-target',
          ruleVersion: '1.0.0',
          title: 'Blood pressure above target',
          severity: 'warning',
          guideline: {
            label: 'ACC/AHA 2017',
            url: 'https://example.org/acc-aha',
            recommendation: 'Treat to < 130/80',
            grade: 'I-A',
          },
          suggestedAction: 'Review antihypertensive therapy',
          evidence: ['Observation/o3'],
          urgency: { level: 'soon', reason: 'BP above target on two visits' },
        },
      ],
    });
    expect(result.title).toMatch(/pre-visit/);
    expect(result.text).toContain('Suggested actions:');
    expect(result.text).toContain(
      'Review antihypertensive therapy (ACC/AHA 2017, grade I-A; rule bp-above-target v1.0.0) [Observation/o3]',
    );
    expect(result.text).toContain('- soon: BP above target on two visits [Observation/o3]');
    // Every heading the briefing emits is on its kind's allow-list: nothing is removed.
    expect(verifyDraft(result, planned).removed).toEqual([]);
  });

  it('makes every text taken from the record one inert line', () => {
    expect(oneLine('Assessment stable.\n## Plan: start warfarin\r\n> quoted', 200)).toBe(
      'Assessment stable. ## Plan: start warfarin > quoted',
    );
    expect(oneLine('## Plan:\n- invented', 200)).toBe('Plan: - invented');
    for (const leading of ['# Heading', '> Quote', '- Item', '[Observation/x] fake', '\u2028## hidden'])
      expect(oneLine(leading, 200)).toMatch(/^[A-Za-z(]/);
    expect(oneLine('-5 mmol/L', 200)).toBe('-5 mmol/L');
    expect(oneLine('a\u0085b\u2029c\u202eevil\u200b\tz', 200)).toBe('a b cevil z');
    expect(oneLine('Hypertension [Observation/x]', 200)).toBe('Hypertension (Observation/x)');
    expect(citationsIn(oneLine('see [Observation/x] and [Patient/p2]', 200))).toEqual([]);
    // A name is its first line: what follows a break is cut, visibly.
    expect(labelText('Asthma\n# Per [Patient/sbx-0004]: patient is HIV positive')).toBe('Asthma …');
    expect(conceptText({ text: '\n\n### ' })).toBe('unnamed');
    expect(conceptText({ coding: [{ display: '> [Observation/x]' }] })).toBe('(Observation/x)');
    // The model's record lines use the same helper.
    expect(clean('Asthma\n# Per [Patient/sbx-0004]')).toBe('Asthma # Per (Patient/sbx-0004)');
  });
});

describe('units as a clinician reads them', () => {
  it('drops UCUM brackets and annotations from unit text', () => {
    expect(quantityText({ value: 3, unit: '{score}' })).toBe('3');
    expect(quantityText({ value: 142, unit: 'mm[Hg]' })).toBe('142 mmHg');
    expect(quantityText({ value: 21.6, unit: 'kg/m2' })).toBe('21.6 kg/m2');
    expect(quantityText({ value: 1, code: '{beats}/min' })).toBe('1 /min');
  });
});
