import { describe, expect, it } from 'vitest';
import { mergeRepeatedFacts } from '../../agents/steps/reduce-facts.ts';

/**
 * A statement copied forward from note to note ("Recent labs: K 4.2") is extracted once per note; the model path
 * wrote it once per note too (the evaluation counted the repeats as duplicates). It is one fact citing each note.
 */
describe('facts repeated across notes', () => {
  it('become one fact citing every note that holds it, in first-seen order', () => {
    const merged = mergeRepeatedFacts([
      { fact: 'Recent labs: K 4.2 mmol/L', citations: ['DocumentReference/a'] },
      { fact: 'Started empagliflozin 10 mg daily', citations: ['DocumentReference/a'] },
      { fact: 'recent labs:  K 4.2 mmol/L.', citations: ['DocumentReference/b'] },
      { fact: 'Recent labs: K 4.2 mmol/L', citations: ['DocumentReference/c', 'DocumentReference/a'] },
    ]);
    expect(merged).toEqual([
      {
        fact: 'Recent labs: K 4.2 mmol/L',
        citations: ['DocumentReference/a', 'DocumentReference/b', 'DocumentReference/c'],
      },
      { fact: 'Started empagliflozin 10 mg daily', citations: ['DocumentReference/a'] },
    ]);
  });

  it('keeps statements that differ in a value apart', () => {
    const facts = [
      { fact: 'HbA1c 7.9 %', citations: ['Observation/1'] },
      { fact: 'HbA1c 8.4 %', citations: ['Observation/2'] },
    ];
    expect(mergeRepeatedFacts(facts)).toEqual(facts);
  });
});
