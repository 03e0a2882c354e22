import type { Encounter, FhirResource } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { formatStatistics } from '../../src/cli/rules.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { summarizeRuleSet } from '../../src/rules/rule-set.ts';
import { SqliteNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { minimalRule, ruleFolder } from './helpers.ts';

/** Issue 13.13: rules that apply only to some encounters, and silent rules that count without showing. */
const adultRule = (id: string, extra = '') =>
  `${minimalRule.replace('id: minimal-rule', `id: ${id}`)}${extra}`;

function record(encounter: Partial<Encounter>) {
  const resources: FhirResource[] = [
    { resourceType: 'Patient', id: 'p1', birthDate: '1970-01-01' },
    {
      resourceType: 'Encounter',
      id: 'e1',
      status: 'planned',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: 'Patient/p1' },
      ...encounter,
    } as Encounter,
  ];
  return recordFromResources(resources);
}

async function ruleSetOf(files: Record<string, string>) {
  const result = await loadRuleSet(ruleFolder(files));
  if (!result.ok) throw new Error(JSON.stringify(result.errors));
  return result.ruleSet;
}

const now = new Date('2026-03-01T00:00:00Z');

describe('13: targeting (applies)', () => {
  it('runs a rule only for the encounter classes, types, locations and departments it names', async () => {
    const ruleSet = await ruleSetOf({
      'ed.yaml': adultRule(
        'ed-only',
        `applies:
  encounterClasses: [EMER]
  locations: [ed-north, ed-south]
`,
      ),
      'cardiology.yaml': adultRule(
        'cardiology-follow-up',
        `applies:
  encounterTypes: ["http://snomed.info/sct|390906007"]
  departments: [cardiology]
`,
      ),
    });
    const statuses = async (encounter: Partial<Encounter>) =>
      Object.fromEntries(
        (await evaluateRules(ruleSet, record(encounter), { trigger: 'encounter-planned', now })).results.map(
          (result) => [result.ruleId, result.status],
        ),
      );
    expect(await statuses({})).toEqual({
      'ed-only': 'not-applicable',
      'cardiology-follow-up': 'not-applicable',
    });
    expect(
      await statuses({
        class: { code: 'EMER' },
        location: [{ location: { reference: 'Location/ed-south' } }],
      }),
    ).toEqual({ 'ed-only': 'fired', 'cardiology-follow-up': 'not-applicable' });
    // The class alone is not enough when locations are named too.
    expect((await statuses({ class: { code: 'EMER' } }))['ed-only']).toBe('not-applicable');
    expect(
      await statuses({
        type: [{ coding: [{ system: 'http://snomed.info/sct', code: '390906007' }] }],
        serviceProvider: { reference: 'Organization/cardiology' },
      }),
    ).toEqual({ 'ed-only': 'not-applicable', 'cardiology-follow-up': 'fired' });
  });

  it('refuses an unknown targeting field by name', async () => {
    const result = await loadRuleSet(
      ruleFolder({ 'ed.yaml': adultRule('ed-only', 'applies:\n  encounterClass: [EMER]\n') }),
    );
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.errors[0].message).toBe('unknown field encounterClass in applies');
  });
});

describe('13: silent mode', () => {
  it('evaluates and counts a silent rule without showing it, capping or suppressing with it', async () => {
    const ruleSet = await ruleSetOf({
      'a-silent.yaml': adultRule('new-rule', 'mode: silent\n'),
      'b-active.yaml': adultRule('live-rule'),
    });
    expect(summarizeRuleSet(ruleSet).rules.map((rule) => [rule.id, rule.mode])).toEqual([
      ['new-rule', 'silent'],
      ['live-rule', 'active'],
    ]);
    const store = new SqliteNudgeStore(':memory:');
    const evaluation = await evaluateRules(ruleSet, record({}), {
      trigger: 'encounter-planned',
      now,
      store,
      perEncounterCap: 1,
    });
    const silent = evaluation.results.find((result) => result.ruleId === 'new-rule');
    expect(silent).toMatchObject({ status: 'fired', silent: true });
    expect(silent?.nudge).toBeUndefined();
    // The cap of one went to the shown rule: the silent one does not take a place.
    expect(evaluation.nudges.map((nudge) => nudge.ruleId)).toEqual(['live-rule']);
    expect(await store.deliveriesForOccasion('p1', 'e1')).toHaveLength(1);

    const statistics = await store.statistics();
    expect(statistics.map((row) => [row.ruleId, row.fired, row.silent])).toEqual([
      ['live-rule', 1, 0],
      ['new-rule', 0, 1],
    ]);
    expect(formatStatistics(statistics, false)).toMatch(/new-rule\s+1\.0\.0\s+0\s+0\s+0\s+0\s+0\s+1\n/);

    // Switched to active the next day: the silent firing does not suppress its first showing.
    const live = await ruleSetOf({ 'a-silent.yaml': adultRule('new-rule') });
    const nextDay = await evaluateRules(live, record({ id: 'e2' }), {
      trigger: 'encounter-planned',
      now: new Date('2026-03-02T00:00:00Z'),
      store,
    });
    expect(nextDay.nudges.map((nudge) => nudge.ruleId)).toEqual(['new-rule']);
    await store.close();
  });
});
