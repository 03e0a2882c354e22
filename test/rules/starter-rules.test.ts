import { readFileSync } from 'node:fs';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { evaluateRules, toNudgeInput } from '../../src/rules/evaluate.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { runRuleTests } from '../../src/rules/rule-tests.ts';
import { starterRulesDirectory, starterSource } from './helpers.ts';

let ruleSet: RuleSet;

beforeAll(async () => {
  const result = await loadRuleSet(starterSource());
  if (!result.ok) throw new Error(JSON.stringify(result.errors));
  ruleSet = result.ruleSet;
});

function fixture(name: string) {
  return recordFromBundle(
    JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', `${name}.json`), 'utf8')),
  );
}

describe('starter rule set', () => {
  it('has at least 8 rules, each citing a guideline with a URL and carrying fixtures that fire and that do not', () => {
    expect(ruleSet.rules.length).toBeGreaterThanOrEqual(8);
    for (const rule of ruleSet.rules) {
      expect(rule.document.guideline.url).toMatch(/^https:\/\//);
      expect(rule.document.guideline.recommendation.length).toBeGreaterThan(20);
      const expectations = rule.document.tests.map((test) => test.expect);
      expect(expectations, rule.document.id).toContain('fires');
      expect(expectations, rule.document.id).toContain('does-not-fire');
      expect(
        rule.criteria.every((criterion) => criterion.kind === 'fhirpath'),
        rule.document.id,
      ).toBe(true);
    }
  });

  const expectedRules = [
    'diabetes-hba1c-overdue',
    'diabetes-statin',
    'hypertension-above-target',
    'colorectal-cancer-screening',
    'influenza-vaccine',
    'pneumococcal-vaccine',
    'opioid-benzodiazepine',
    'raas-inhibitor-monitoring',
    'depression-screening',
    'severe-blood-pressure',
  ];

  it.each(expectedRules)('%s fires on its firing fixtures and not on the others', async (ruleId) => {
    const outcomes = await runRuleTests(ruleSet, [ruleId]);
    expect(outcomes.length).toBeGreaterThanOrEqual(2);
    for (const outcome of outcomes)
      expect(outcome.passed, `${outcome.fixture}: ${outcome.message}`).toBe(true);
    expect(outcomes.some((outcome) => outcome.expect === 'fires' && outcome.result?.status === 'fired')).toBe(
      true,
    );
    expect(
      outcomes.some(
        (outcome) => outcome.expect === 'does-not-fire' && outcome.result?.status === 'not-fired',
      ),
    ).toBe(true);
  });

  it('cites the data that made a rule fire and fills its templates', async () => {
    const evaluation = await evaluateRules(ruleSet, fixture('opioid-benzo'), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
      ruleIds: ['opioid-benzodiazepine'],
    });
    const nudge = evaluation.nudges[0];
    expect(nudge.evidence.sort()).toEqual([
      'MedicationRequest/opioid-benzo-alpraz',
      'MedicationRequest/opioid-benzo-oxy',
    ]);
    expect(nudge.severity).toBe('critical');
    expect(nudge.summary.length).toBeLessThan(140);

    const hba1c = await evaluateRules(ruleSet, fixture('dm-a1c-overdue'), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
      ruleIds: ['diabetes-hba1c-overdue'],
    });
    expect(hba1c.nudges[0].suggestedAction).toBe('Order an HbA1c (last result: 8.1 %, 2025-06-10).');
    expect(hba1c.nudges[0].evidence).toEqual(['Condition/dm-a1c-overdue-dm']);
    // The draft engines' contract: exactly the NudgeInput fields.
    expect(Object.keys(toNudgeInput(hba1c.nudges[0])).sort()).toEqual(
      ['evidence', 'guideline', 'ruleId', 'ruleVersion', 'severity', 'suggestedAction', 'title'].sort(),
    );
  });

  it('sets the visit urgency with its reasons: urgent for a severe reading, soon for uncontrolled hypertension', async () => {
    const severe = await evaluateRules(ruleSet, fixture('bp-severe'), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
    });
    expect(severe.urgency?.level).toBe('urgent');
    expect(severe.urgency?.reasons[0]).toMatchObject({
      ruleId: 'severe-blood-pressure',
      reason: expect.stringContaining('186/118'),
    });
    const uncontrolled = await evaluateRules(ruleSet, fixture('htn-uncontrolled'), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
    });
    expect(uncontrolled.urgency?.level).toBe('soon');
    const controlled = await evaluateRules(ruleSet, fixture('htn-controlled'), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
    });
    expect(controlled.urgency).toBeUndefined();
  });

  it('runs only the rules whose trigger matches', async () => {
    const finished = await evaluateRules(ruleSet, fixture('dm-a1c-overdue'), {
      trigger: 'encounter-finished',
      now: new Date('2026-03-01'),
    });
    const hba1c = finished.results.find((result) => result.ruleId === 'diabetes-hba1c-overdue');
    expect(hba1c?.status).toBe('not-triggered');
  });

  it('answers the same on any day for a fixed evaluation date (the clock is the evaluation instant)', async () => {
    const march = await evaluateRules(ruleSet, fixture('flu-due'), {
      trigger: 'patient-view',
      now: new Date('2026-03-01'),
      ruleIds: ['influenza-vaccine'],
    });
    const june = await evaluateRules(ruleSet, fixture('flu-due'), {
      trigger: 'patient-view',
      now: new Date('2026-06-15'),
      ruleIds: ['influenza-vaccine'],
    });
    expect(march.results[0].status).toBe('fired');
    expect(june.results[0].status).toBe('not-fired');
  });
});

describe('native filters', () => {
  it('since() keeps resources dated on or after the boundary, whatever the date field; latest() picks the newest', async () => {
    const { compileFhirPath, fhirPathEnvironment } = await import('../../src/rules/fhirpath-compiler.ts');
    const record = fixture('htn-uncontrolled');
    const environment = fhirPathEnvironment(record, new Date('2026-03-01'));
    const since = (expression: string) =>
      (compileFhirPath(expression, ruleSet.valueSets).evaluate(environment) as { id: string }[]).map(
        (resource) => resource.id,
      );
    expect(since('%observations.since(@2025-12-01)')).toEqual(['htn-uncontrolled-bp2']);
    expect(since('%observations.since(now() - 6 months)').sort()).toEqual([
      'htn-uncontrolled-bp1',
      'htn-uncontrolled-bp2',
    ]);
    expect(since('%encounters.since(@2026-01-01)').sort()).toEqual([
      'htn-uncontrolled-e2',
      'htn-uncontrolled-visit',
    ]);
    expect(since('%conditions.since(@2019-01-01)')).toEqual([]);
    expect(since('%observations.latest()')).toEqual(['htn-uncontrolled-bp2']);
    expect(since('%observations.latest()')).toEqual(
      since('%observations.sort(effective.ofType(dateTime) desc).first()'),
    );
    // The same filter written in plain FHIRPath gives the same answer.
    expect(since('%observations.where(effective >= now() - 6 months)').sort()).toEqual([
      'htn-uncontrolled-bp1',
      'htn-uncontrolled-bp2',
    ]);
  });
});
