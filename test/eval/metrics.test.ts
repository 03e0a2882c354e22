import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import { aggregate, bootstrapRatio, type MeasuredDraft } from '../../src/eval/aggregate.ts';
import { type LabelledFact, labelledFacts } from '../../src/eval/labelled-set.ts';
import { scoreDraft } from '../../src/eval/metrics.ts';
import { recordForDraft } from '../../src/eval/run-eval.ts';
import { type DraftCaseReference, type EvalSource, openSource } from '../../src/eval/sources.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';

/**
 * The metrics move when a draft is worse: a planted fact left out lowers recall by exactly that fact, a
 * line citing another patient's resource is counted as a wrong-patient citation (and never written),
 * and a value the cited resource does not hold makes its statement unsupported.
 */
let source: EvalSource;
let record: PatientRecord;
let otherRecord: PatientRecord;
let facts: LabelledFact[];
let owners: Map<string, string>;
let draftText: string;

function score(text: string, headings: string[] = []) {
  const result = {
    kind: 'progress-summary' as const,
    title: 't',
    text,
    headings,
    engine: { id: 'x', version: '1' },
  };
  return scoreDraft({
    record,
    facts,
    engineText: text,
    headings,
    verification: verifyDraft(result, record),
    owners,
    expectedRuleIds: [],
  });
}

function recalled(text: string, category?: string): number {
  return score(text).facts.filter((fact) => fact.recalled && (!category || fact.category === category))
    .length;
}

beforeAll(async () => {
  source = await openSource({ kind: 'sandbox', patients: 3, seed: 20261127 });
  const read = async (patientId: string) => {
    const reference = source.cases.find(
      (candidate) => candidate.patientId === patientId && candidate.kind === 'progress-summary',
    );
    const record = await recordForDraft(source.fhir, reference as DraftCaseReference, {
      draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
    });
    return record as PatientRecord;
  };
  record = await read('sbx-0002');
  otherRecord = await read('sbx-0001');
  facts = labelledFacts(record, [], source.planted.get('sbx-0002') ?? []);
  owners = new Map(
    [record, otherRecord].flatMap((each) =>
      recordResources(each).map((resource) => [
        `${resource.resourceType}/${resource.id}`,
        each.patient.id as string,
      ]),
    ),
  );
  // A draft that says every fact once, citing its source: the metrics' ceiling, built without any engine.
  draftText = ['## Summary', ...facts.map((fact) => `- ${fact.terms.join(' ')} [${fact.sources[0]}]`)].join(
    '\n',
  );
}, 120_000);

afterAll(async () => {
  await source?.close();
});

describe('draft metrics', () => {
  it('count a planted fact the draft carries, and lose exactly it when its line is left out', () => {
    const planted = facts.filter((fact) => fact.category === 'planted');
    expect(planted.length).toBeGreaterThan(0);
    expect(recalled(draftText)).toBe(facts.length);
    const line = `- ${planted[0].terms.join(' ')} [${planted[0].sources[0]}]`;
    const omitted = draftText.replace(`${line}\n`, '').replace(line, '');
    expect(recalled(omitted, 'planted')).toBe(planted.length - 1);
    expect(recalled(omitted)).toBe(facts.length - 1);
  });

  it('count a fact only when its line cites a source that holds it', () => {
    const medication = facts.find((fact) => fact.category === 'medication') as LabelledFact;
    const line = `- ${medication.terms.join(' ')}`;
    expect(recalled(`${line} [${medication.sources[0]}]`, 'medication')).toBe(1);
    expect(recalled(line, 'medication')).toBe(0);
    // The patient resource is this patient's, but does not say the medication.
    expect(recalled(`${line} [Patient/${record.patient.id}]`, 'medication')).toBe(0);
  });

  it('count a citation of another patient, which the verifier keeps out of the written text', () => {
    expect(score(draftText).wrongPatientCitations).toBe(0);
    const foreign = otherRecord.conditions[0];
    const miscited = `${draftText}\n- Also noted. [Condition/${foreign.id}]`;
    const scored = score(miscited);
    expect(scored.wrongPatientCitations).toBe(1);
    expect(scored.wrongPatientCitationsWritten).toBe(0);
    expect(scored.removedByVerifier['unknown-citation']).toBe(1);
  });

  it('find a statement unsupported when its cited resource does not hold its value', () => {
    const baseline = score(draftText).statements;
    expect(baseline.checked).toBe(facts.length);
    expect(baseline.supported).toBe(facts.length);
    const result = facts.find((fact) => fact.category === 'result') as LabelledFact;
    const line = `- ${result.terms.join(' ')} [${result.sources[0]}]`;
    const altered = draftText.replace(line, line.replace(result.terms[0], '987.6'));
    const scored = score(altered).statements;
    expect(scored.checked).toBe(baseline.checked);
    expect(scored.supported).toBe(baseline.supported - 1);
    // The suggested actions rest on rules (nudge agreement measures them), under either heading form.
    const condition = facts.find((fact) => fact.category === 'problem') as LabelledFact;
    const suggestion = `- Order the recommended test (USPSTF; rule some-rule v1) [${condition.sources[0]}]`;
    for (const heading of ['Suggested actions:', '## Suggested actions']) {
      const withSuggestion = score(`${draftText}\n${heading}\n${suggestion}`, [heading]).statements;
      expect(withSuggestion).toEqual(baseline);
    }
    expect(score(`${draftText}\n${suggestion}`).statements.checked).toBe(baseline.checked + 1);
    // A word the source does not say fails it too.
    const embellished = draftText.replace(line, line.replace(' [', ' worsening ['));
    expect(score(embellished).statements.supported).toBe(baseline.supported - 1);
  });
});

describe('aggregation over patients', () => {
  it('pools facts, counts a failed draft as recalling nothing, and gives an interval around the value', () => {
    const draft = (patientId: string, recalledFacts: boolean[], failure = false): MeasuredDraft => ({
      patientId,
      kind: 'progress-summary',
      ...(failure
        ? {
            failure: 'EmptyDraftError',
            askedFacts: recalledFacts.map(() => ({ category: 'problem', recalled: false })),
          }
        : {
            score: {
              facts: recalledFacts.map((value) => ({ category: 'problem' as const, recalled: value })),
              statements: { checked: 2, supported: 1 },
              removedByVerifier: { 'no-citation': 1, 'unknown-citation': 0, 'other-patient': 0 },
              wrongPatientCitations: 0,
              wrongPatientCitationsWritten: 0,
              nudges: { expected: 1, present: 1, extra: 0 },
            },
          }),
      fallback: false,
      usage: { modelCalls: 3, promptTokens: 100, completionTokens: 10 },
      seconds: 0.5,
    });
    const figures = aggregate('test', [
      draft('a', [true, true, true, false]),
      draft('b', [true, true]),
      draft('c', [true, true], true),
    ]);
    expect(figures.patients).toBe(3);
    expect(figures.failedDrafts).toBe(1);
    expect(figures.factRecall.overall.value).toBe(0.625);
    expect(figures.factRecall.overall.n).toBe(8);
    expect(figures.factRecall.overall.low).toBeLessThan(0.625);
    expect(figures.factRecall.overall.high).toBeGreaterThan(0.625);
    expect(figures.statementSupport.value).toBe(0.5);
    expect(figures.statementSupport.includingRemovals).toBeCloseTo(2 / 6, 4);
    expect(bootstrapRatio([]).value).toBeNull();
  });
});
