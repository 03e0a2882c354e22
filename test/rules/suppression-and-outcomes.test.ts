import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { beforeAll, describe, expect, it } from 'vitest';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { InMemoryNudgeStore, type NudgeStore } from '../../src/rules/nudge-store.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { SqliteNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { starterRulesDirectory, starterSource } from './helpers.ts';

let ruleSet: RuleSet;
beforeAll(async () => {
  const result = await loadRuleSet(starterSource());
  if (!result.ok) throw new Error('starter rules do not load');
  ruleSet = result.ruleSet;
});

const record = () =>
  recordFromBundle(
    JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', 'dm-a1c-overdue.json'), 'utf8')),
  );
const day = (iso: string) => new Date(`${iso}T10:00:00Z`);

const stores: [string, () => NudgeStore][] = [
  ['in memory', () => new InMemoryNudgeStore()],
  [
    'sqlite',
    () => new SqliteNudgeStore(path.join(mkdtempSync(path.join(tmpdir(), 'nudges-')), 'rules.sqlite')),
  ],
];

describe.each(stores)('suppression windows and outcomes (%s store)', (_name, createStore) => {
  it('shows a nudge once per window per patient, again for the same encounter, and again after the window', async () => {
    const store = createStore();
    const options = { trigger: 'encounter-planned' as const, store, ruleIds: ['diabetes-hba1c-overdue'] };
    const first = await evaluateRules(ruleSet, record(), {
      ...options,
      now: day('2026-03-01'),
      occasionId: 'Encounter/a',
    });
    expect(first.nudges).toHaveLength(1);
    // A retried job for the same encounter shows the same nudge (same id): not suppressed by itself.
    const retried = await evaluateRules(ruleSet, record(), {
      ...options,
      now: day('2026-03-02'),
      occasionId: 'Encounter/a',
    });
    expect(retried.nudges.map((nudge) => nudge.id)).toEqual(first.nudges.map((nudge) => nudge.id));
    // Another encounter 30 days later falls inside the 90-day window.
    const later = await evaluateRules(ruleSet, record(), {
      ...options,
      now: day('2026-03-31'),
      occasionId: 'Encounter/b',
    });
    expect(later.nudges).toHaveLength(0);
    expect(later.results[0]).toMatchObject({
      status: 'suppressed',
      suppressedBy: { nudgeId: first.nudges[0].id },
    });
    // After the window it shows again, under a new id for the new encounter.
    const afterWindow = await evaluateRules(ruleSet, record(), {
      ...options,
      now: day('2026-06-15'),
      occasionId: 'Encounter/c',
    });
    expect(afterWindow.nudges).toHaveLength(1);
    expect(afterWindow.nudges[0].id).not.toBe(first.nudges[0].id);
    await store.close();
  });

  it('counts fired, accepted, overridden with reasons, ignored and unanswered per rule version', async () => {
    const store = createStore();
    const deliveries = ['n1', 'n2', 'n3', 'n4', 'n5'].map((nudgeId, index) => ({
      nudgeId,
      ruleId: 'diabetes-statin',
      ruleVersion: index < 4 ? '1.0.0' : '1.1.0',
      patientId: `p${index}`,
      occasionId: `Encounter/e${index}`,
      deliveredAt: day('2026-03-01'),
    }));
    for (const delivery of deliveries) await store.recordDelivery(delivery);
    await store.recordDelivery(deliveries[0]); // idempotent
    await store.recordOutcome({
      nudgeId: 'n1',
      outcome: 'accepted',
      source: 'cds-hooks',
      recordedAt: day('2026-03-01'),
    });
    await store.recordOutcome({
      nudgeId: 'n2',
      outcome: 'overridden',
      reason: 'Patient declined',
      source: 'cds-hooks',
      recordedAt: day('2026-03-01'),
    });
    await store.recordOutcome({
      nudgeId: 'n3',
      outcome: 'ignored',
      source: 'review-app',
      recordedAt: day('2026-03-01'),
    });
    // A later outcome replaces an earlier one; an older one does not replace a newer one.
    await store.recordOutcome({
      nudgeId: 'n3',
      outcome: 'overridden',
      reason: 'Patient declined',
      source: 'review-app',
      recordedAt: day('2026-03-02'),
    });
    await store.recordOutcome({
      nudgeId: 'n3',
      outcome: 'accepted',
      source: 'review-app',
      recordedAt: day('2026-02-01'),
    });
    const statistics = await store.statistics();
    expect(statistics).toEqual([
      {
        ruleId: 'diabetes-statin',
        ruleVersion: '1.0.0',
        fired: 4,
        accepted: 1,
        overridden: 2,
        ignored: 0,
        noResponse: 1,
        silent: 0,
        overrideReasons: { 'Patient declined': 2 },
      },
      {
        ruleId: 'diabetes-statin',
        ruleVersion: '1.1.0',
        fired: 1,
        accepted: 0,
        overridden: 0,
        ignored: 0,
        noResponse: 1,
        silent: 0,
        overrideReasons: {},
      },
    ]);
    expect(await store.findDelivery('n2')).toMatchObject({ patientId: 'p1', ruleVersion: '1.0.0' });
    await store.close();
  });
});

describe('the per-encounter cap', () => {
  it('keeps the most severe nudges and counts the rest as capped', async () => {
    const evaluation = await evaluateRules(ruleSet, record(), {
      trigger: 'encounter-planned',
      now: day('2026-03-01'),
      perEncounterCap: 2,
    });
    const fired = evaluation.results.filter((result) => ['fired', 'capped'].includes(result.status));
    expect(fired.length).toBeGreaterThan(2);
    expect(evaluation.nudges).toHaveLength(2);
    expect(evaluation.nudges.map((nudge) => nudge.severity)).toEqual(['warning', 'warning']);
    expect(evaluation.results.filter((result) => result.status === 'capped').length).toBe(fired.length - 2);
  });
});

describe('the sqlite store', () => {
  it('keeps deliveries across a restart, so suppression survives it', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'nudges-')), 'rules.sqlite');
    const before = new SqliteNudgeStore(file);
    await evaluateRules(ruleSet, record(), {
      trigger: 'encounter-planned',
      now: day('2026-03-01'),
      store: before,
      occasionId: 'Encounter/a',
      ruleIds: ['diabetes-hba1c-overdue'],
    });
    await before.close();
    const after = new SqliteNudgeStore(file);
    const evaluation = await evaluateRules(ruleSet, record(), {
      trigger: 'encounter-planned',
      now: day('2026-03-10'),
      store: after,
      occasionId: 'Encounter/b',
      ruleIds: ['diabetes-hba1c-overdue'],
    });
    expect(evaluation.results[0].status).toBe('suppressed');
    await after.close();
  });
});
