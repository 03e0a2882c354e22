import { readFileSync } from 'node:fs';
import path from 'node:path';
import type { DocumentReference } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { assessmentAndPlan, noteConclusion } from '../../agents/note-sections.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';

describe('assessment-and-plan headings in the common styles', () => {
  it.each([
    [
      'markdown headings (Synthea)',
      '# History of Present Illness\nCough.\n\n# Assessment and Plan\n\n## Plan\nRest and fluids.\n',
    ],
    ['HEADING: on its own line', 'HPI: cough\nASSESSMENT AND PLAN:\nRest and fluids.'],
    ['A/P with text on the line', 'S: cough\nO: afebrile\nA/P: Rest and fluids.'],
    ['A&P', 'Exam: clear lungs\nA&P: Rest and fluids.'],
    ['Impression and Plan', 'Review of systems: negative\n\nImpression and Plan:\nRest and fluids.'],
    ['Assessment/Plan', 'Physical Exam:\nClear lungs.\nAssessment/Plan:\nRest and fluids.'],
    ['Assessment & Plan', 'Vitals:\nBP 120/80\nAssessment & Plan\nRest and fluids.'],
    ['an ALL CAPS line', 'PHYSICAL EXAMINATION\nClear lungs.\nIMPRESSION\nRest and fluids.'],
    ['bold markdown', '**Subjective:** cough\n**Plan:** Rest and fluids.'],
    ['SOAP letters', 'S: cough\nO: clear lungs\nA: Viral bronchitis.\nP: Rest and fluids.'],
    ['Dx/Plan', 'Exam: clear lungs\nDx/Plan:\nRest and fluids.'],
    ['Plan/Recommendations', 'ROS: negative\nPLAN/RECOMMENDATIONS:\nRest and fluids.'],
  ])('%s', (_style, text) => {
    const conclusion = noteConclusion(text);
    expect(conclusion?.kind).toBe('assessment-and-plan');
    expect(conclusion?.text).toMatch(/Rest and fluids\.$/);
    // Nothing from the sections before it.
    expect(conclusion?.text).not.toMatch(/cough|clear lungs|BP|negative/i);
  });

  it('joins the assessment and the plan, labelling the second part', () => {
    expect(assessmentAndPlan('S: ok\nAssessment: T2DM, above goal.\nPlan: increase metformin.')).toBe(
      'T2DM, above goal. Plan: increase metformin.',
    );
    expect(assessmentAndPlan('S: ok\nA/P: stable, continue')).toBe('stable, continue');
    expect(assessmentAndPlan('HPI: cough\nASSESSMENT AND PLAN:\n1. bronchitis\n2. fluids')).toBe(
      '1. bronchitis; 2. fluids',
    );
  });

  it('keeps problem sub-headings and plan lines inside the plan, and stops at the next section or sign-off', () => {
    const text = [
      'Chief Complaint: follow-up',
      'ASSESSMENT AND PLAN:',
      'Diabetes:',
      '- A1c 8.1, above goal',
      '- increase metformin',
      'Labs: A1c in 3 months',
      'Hypertension: controlled, continue lisinopril.',
      '',
      'Electronically signed by Dr. Example 10/01/2026',
    ].join('\n');
    expect(assessmentAndPlan(text)).toBe(
      'Diabetes: A1c 8.1, above goal; increase metformin. Labs: A1c in 3 months. Hypertension: controlled, continue lisinopril.',
    );
    const markdown =
      '# Assessment\nStable angina.\n## Angina\nStress test.\n# Orders\nECG today\n# Social History\nSmoker.';
    expect(assessmentAndPlan(markdown)).toBe('Stable angina. Angina: Stress test.');
  });

  it('leaves out a lead-in with nothing under it, but keeps ALL CAPS lines that are the plan itself', () => {
    expect(
      assessmentAndPlan(
        '# Plan\nThe following procedures were conducted:\nThe patient was placed on a careplan:\n- wound care',
      ),
    ).toBe('The patient was placed on a careplan: wound care');
    expect(assessmentAndPlan('# Plan\nThe following procedures were conducted:\n')).toBeUndefined();
    expect(assessmentAndPlan('HPI: cough\nPLAN:\nCONTINUE METFORMIN\nRTC 3 MONTHS')).toBe(
      'CONTINUE METFORMIN. RTC 3 MONTHS',
    );
  });

  it('counts a list item repeated in one list once', () => {
    const text =
      '# Plan\nThe following procedures were conducted:\n- hearing test\n- chemotherapy\n- hearing test\n- chemotherapy\n- hearing test';
    expect(assessmentAndPlan(text)).toBe(
      'The following procedures were conducted: hearing test ×3; chemotherapy ×2',
    );
  });

  it('contributes the last paragraph(s) of a note without sections, never nothing', () => {
    const free =
      'Patient seen today for routine follow-up.\n\nDoing well on current therapy, no side effects, blood pressure at goal at home.\nWill continue the same dose and review in six months.';
    expect(noteConclusion(free)).toEqual({
      kind: 'last-paragraphs',
      text: 'Doing well on current therapy, no side effects, blood pressure at goal at home. Will continue the same dose and review in six months.',
      section: undefined,
    });
    expect(assessmentAndPlan(free)).toBe(
      'Last paragraph: Doing well on current therapy, no side effects, blood pressure at goal at home. Will continue the same dose and review in six months.',
    );
    // A short last paragraph brings the one before it; a sign-off is not a conclusion.
    const short =
      'Long discussion of options with the patient and family today.\n\nRTC 2 wk.\n\nElectronically signed by Dr. Example';
    expect(assessmentAndPlan(short)).toBe(
      'Last paragraph: Long discussion of options with the patient and family today. RTC 2 wk.',
    );
    expect(noteConclusion('   \n\n ')).toBeUndefined();
  });

  it('gives the reason for the visit when the plan sections are there but empty', () => {
    const empty =
      '# Chief Complaint\nFollow-up of diabetes\n\n# Medications\nmetformin 500 mg\n\n# Assessment and Plan\n\n## Plan\n\n';
    expect(noteConclusion(empty)).toEqual({
      kind: 'reason-for-visit',
      text: 'Follow-up of diabetes',
      section: 'Chief Complaint',
    });
    expect(assessmentAndPlan(empty)).toBe('Reason for visit (Chief Complaint): Follow-up of diabetes');
    expect(assessmentAndPlan('Reason for visit: cough\nPLAN:\n')).toBe('Reason for visit: cough');
  });

  it('does not take a closing list of medications or allergies for a conclusion', () => {
    const discharge =
      'Hospital course:\nUneventful recovery after appendectomy, tolerating diet.\n\nMedications:\nmetformin 500 mg\n\nAllergies:\nNKDA';
    expect(assessmentAndPlan(discharge)).toBe(
      'Last paragraph (Hospital course): Uneventful recovery after appendectomy, tolerating diet.',
    );
  });

  it('bounds what it returns', () => {
    const long = `Plan:\n${'Continue the current regimen and review. '.repeat(100)}`;
    const conclusion = noteConclusion(long, 200) as { text: string };
    expect(conclusion.text.length).toBeLessThanOrEqual(200);
    expect(conclusion.text).toMatch(/review\.…$|regimen…$|and…$|the…$|current…$|Continue…$/);
    expect((noteConclusion('x '.repeat(2000)) as { text: string }).text.length).toBeLessThanOrEqual(600);
  });
});

/** Every progress note of the shared Synthea patients (413, base64 text/plain). */
describe.skipIf(!sharedFixtures)('the shared Synthea notes', () => {
  const notes = (): string[] =>
    readFileSync(path.join(sharedFixtures as string, 'synthea-r4', 'DocumentReference.000.ndjson'), 'utf8')
      .trim()
      .split('\n')
      .map((line) => JSON.parse(line) as DocumentReference)
      .map((document) => {
        const attachment = document.content[0].attachment;
        return decodeBase64Text(attachment.data as string, attachment.contentType);
      });

  it('gives every note a sensible conclusion: its plan, or its reason for the visit when the plan is empty', () => {
    const texts = notes();
    expect(texts).toHaveLength(413);
    const kinds = { 'assessment-and-plan': 0, 'reason-for-visit': 0, 'last-paragraphs': 0 };
    for (const text of texts) {
      const conclusion = noteConclusion(text);
      expect(conclusion, 'every note contributes').toBeDefined();
      if (!conclusion) continue;
      kinds[conclusion.kind]++;
      expect(conclusion.text.length).toBeGreaterThan(0);
      expect(conclusion.text.length).toBeLessThanOrEqual(600);
      // No markup and nothing from the history sections (the HPI names the patient and their age).
      expect(conclusion.text).not.toMatch(
        /^#|\n|year-old|Patient has a history of|socioeconomic|Known Allergies/,
      );
      const [, assessmentAndPlanSection] = text.split('# Assessment and Plan');
      const [assessment, plan] = assessmentAndPlanSection.split('## Plan');
      if (assessment.trim() || plan.trim()) {
        expect(conclusion.kind).toBe('assessment-and-plan');
        // What a clinician reads first in the section is what the conclusion starts with.
        const first = (assessment.trim() || plan.trim()).split('\n')[0].replace(/^- /, '').slice(0, 40);
        expect(conclusion.text.startsWith(first)).toBe(true);
      } else {
        // Synthea left both parts empty: the reason for the visit stands in, said as such.
        expect(conclusion.kind).toBe('reason-for-visit');
        expect(conclusion.section).toBe('Chief Complaint');
        expect(assessmentAndPlan(text)).toMatch(/^Reason for visit \(Chief Complaint\): \S/);
      }
    }
    expect(kinds).toEqual({ 'assessment-and-plan': 401, 'reason-for-visit': 12, 'last-paragraphs': 0 });
  });

  it('reads a Synthea plan as a clinician would', () => {
    const text = notes().find((candidate) =>
      candidate.includes('Patient is presenting with laceration of hand'),
    );
    expect(text).toBeDefined();
    expect(assessmentAndPlan(text as string)).toBe(
      'Patient is presenting with laceration of hand. Plan: The following procedures were conducted: suture open wound; injection of tetanus antitoxin. The patient was prescribed the following medications: ibuprofen 100 mg oral tablet. The patient was placed on a careplan: wound care',
    );
  });
});
