import { describe, expect, it } from 'vitest';
import { citationsIn, verifyCitations } from '../../agents/citation-verifier.ts';

const retrieved = new Set(['Condition/c1', 'Observation/o1', 'Patient/p1']);

describe('citation verifier', () => {
  it('keeps headings and cited lines, removes uncited and hallucinated ones, and flags the draft', () => {
    const result = verifyCitations(
      [
        '## Summary',
        'Problems:',
        '- Diabetes [Condition/c1]',
        '- HbA1c 8.1 % [Observation/o1/_history/3]',
        '- Patient is doing well',
        '- Potassium high [Observation/o-invented]',
        '- Mixed claim [Condition/c1] [Condition/other-patient]',
      ].join('\n'),
      retrieved,
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

  it('does not flag a fully supported text', () => {
    const result = verifyCitations('- Diabetes [Condition/c1]', retrieved);
    expect(result.flagged).toBe(false);
    expect(citationsIn('a [Condition/c1] b [Patient/p1]')).toEqual(['Condition/c1', 'Patient/p1']);
  });
});
