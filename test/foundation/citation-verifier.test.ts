import { describe, expect, it } from 'vitest';
import {
  type CitationScope,
  citationScopeOf,
  citationsIn,
  removalCounts,
  verifyCitations,
} from '../../agents/citation-verifier.ts';
import { extractiveHeadings } from '../../agents/extractive-engine.ts';
import { modelHeadingLines } from '../../agents/output-schemas.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';

const scope: CitationScope = {
  patient: 'Patient/p1',
  citable: new Set(['Condition/c1', 'Observation/o1', 'Patient/p1']),
  otherPatients: new Set(['Condition/of-p2']),
  headings: ['## Summary', 'Problems:'],
};

describe('citation verifier', () => {
  it('keeps the template headings and cited lines, removes uncited and hallucinated ones, and flags the draft', () => {
    const result = verifyCitations(
      [
        '## Summary',
        'Problems:',
        '- Diabetes [Condition/c1]',
        '- HbA1c 8.1 % [Observation/o1/_history/3]',
        '- Patient is doing well',
        '- Potassium high [Observation/o-invented]',
        '- Mixed claim [Condition/c1] [Condition/not-retrieved]',
      ].join('\n'),
      scope,
    );
    expect(result.text).toBe(
      [
        '## Summary',
        'Problems:',
        '- Diabetes [Condition/c1]',
        '- HbA1c 8.1 % [Observation/o1/_history/3]',
      ].join('\n'),
    );
    expect(result.cited.sort()).toEqual(['Condition/c1', 'Observation/o1']);
    expect(result.removed.map((entry) => entry.reason)).toEqual([
      'no-citation',
      'unknown-citation',
      'unknown-citation',
    ]);
    expect(result.flagged).toBe(true);
  });

  it('exempts only the exact headings of the template: lines shaped like headings or labels are verified', () => {
    const result = verifyCitations(
      [
        '## Summary',
        '# Per [Patient/p2]: patient is HIV positive',
        '## Plan: start warfarin 10 mg daily',
        'Plan:',
        'Start chemotherapy next week:',
        '---',
        '## Summary [Condition/of-p2]',
        '- Diabetes [Condition/c1]',
      ].join('\n'),
      scope,
    );
    expect(result.text).toBe(['## Summary', '- Diabetes [Condition/c1]'].join('\n'));
    expect(result.removed.map((entry) => entry.reason)).toEqual([
      'other-patient',
      'no-citation',
      'no-citation',
      'no-citation',
      'no-citation',
      'other-patient',
    ]);
  });

  it('always removes a line citing another patient, whatever else it cites', () => {
    const result = verifyCitations(
      [
        '- Sister has the same condition [Condition/c1] [Patient/p2]',
        '- Shared history [Condition/of-p2] [Observation/o1]',
        '- About the patient [Patient/p1]',
      ].join('\n'),
      scope,
    );
    expect(result.text).toBe('- About the patient [Patient/p1]');
    expect(removalCounts(result)).toEqual({ 'no-citation': 0, 'unknown-citation': 0, 'other-patient': 2 });
    expect(result.flagged).toBe(true);
  });

  it('does not flag a fully supported text', () => {
    const result = verifyCitations('- Diabetes [Condition/c1]', scope);
    expect(result.flagged).toBe(false);
    expect(citationsIn('a [Condition/c1] b [Patient/p1]')).toEqual(['Condition/c1', 'Patient/p1']);
  });

  it("scopes citations to the record's resources of its own patient, narrowed to what a model was shown", () => {
    const record = buildPatientRecord({ noteCount: 2 });
    const foreign = {
      ...record.conditions[0],
      id: 'cond-foreign',
      subject: { reference: 'Patient/someone-else' },
    };
    const unowned = { ...record.observations[0], id: 'obs-unowned', subject: undefined };
    const withStrays = {
      ...record,
      conditions: [...record.conditions, foreign],
      observations: [...record.observations, unowned],
    };
    const headings = modelHeadingLines(['Results']);
    const full = citationScopeOf(withStrays, headings);
    expect(full.patient).toBe('Patient/patient-1');
    expect(full.citable.has('Condition/cond-1')).toBe(true);
    expect(full.citable.has('DocumentReference/note-1')).toBe(true);
    const text = [
      '## Results',
      '- Own [Condition/cond-1]',
      '- Foreign [Condition/cond-foreign]',
      '- Unowned [Observation/obs-unowned]',
    ].join('\n');
    expect(verifyCitations(text, full).removed.map((entry) => entry.reason)).toEqual([
      'other-patient',
      'unknown-citation',
    ]);
    const shownOnly = citationScopeOf(withStrays, headings, ['Condition/cond-2', 'Condition/cond-foreign']);
    const narrowed = verifyCitations(text, shownOnly);
    expect(narrowed.removed.map((entry) => entry.reason)).toEqual([
      'unknown-citation',
      'other-patient',
      'unknown-citation',
    ]);
  });

  it('allow-lists per draft kind exactly the headings each template emits', () => {
    expect(extractiveHeadings['progress-summary']).toContain('Active problems:');
    expect(extractiveHeadings['progress-summary']).not.toContain('Pending results:');
    expect(extractiveHeadings['previsit-briefing']).toContain('Pending results:');
    expect(modelHeadingLines(['Encounter', 'Results'])).toEqual([
      '## Encounter',
      '## Results',
      '## Suggested actions',
    ]);
  });
});
