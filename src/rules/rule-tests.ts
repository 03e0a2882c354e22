import { readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Bundle } from 'fhir/r4.js';
import { evaluateRules, type RuleResult } from './evaluate.ts';
import { recordFromBundle } from './record-from-bundle.ts';
import type { RuleSet } from './rule-set.ts';

/**
 * `rules test`: each rule against the fixtures its file lists. Suppression and the cap are left out
 * on purpose: a test asks whether the rule's logic fires, not whether today's window would show it.
 */
export interface RuleTestOutcome {
  ruleId: string;
  fixture: string;
  expect: 'fires' | 'does-not-fire';
  passed: boolean;
  /** Why it failed, in words an informatics team can act on. */
  message: string;
  result: RuleResult | undefined;
}

export async function runRuleTests(ruleSet: RuleSet, ruleIds?: string[]): Promise<RuleTestOutcome[]> {
  const outcomes: RuleTestOutcome[] = [];
  for (const rule of ruleSet.rules) {
    if (ruleIds && !ruleIds.includes(rule.document.id)) continue;
    for (const test of rule.document.tests) {
      const fixtureFile = path.resolve(ruleSet.directory, path.dirname(rule.file), test.fixture);
      const bundle = JSON.parse(await readFile(fixtureFile, 'utf8')) as Bundle;
      const record = recordFromBundle(bundle);
      const evaluation = await evaluateRules(ruleSet, record, {
        trigger: test.trigger ?? rule.document.trigger[0],
        now: new Date(test.now),
        ruleIds: [rule.document.id],
        perEncounterCap: Number.MAX_SAFE_INTEGER,
        explain: true,
        ...(test.parameters ? { cqlParameters: test.parameters } : {}),
      });
      const result = evaluation.results[0];
      const fired = result?.status === 'fired';
      // An evaluation error is never a pass: "does-not-fire" means the rule ran and did not fire.
      const failed = result?.status === 'error';
      let passed = !failed && fired === (test.expect === 'fires');
      let message = passed
        ? 'ok'
        : failed
          ? `evaluation failed: ${result.error}`
          : `expected ${test.expect}, but it ${fired ? 'fired' : 'did not fire'}`;
      if (passed && test.expectUrgency && result?.nudge?.urgency?.level !== test.expectUrgency) {
        passed = false;
        message = `expected urgency ${test.expectUrgency}, got ${result?.nudge?.urgency?.level ?? 'none'}`;
      }
      if (!passed && result && !failed) {
        const failing = result.criteria.map((criterion) => `${criterion.id}=${criterion.holds}`).join(', ');
        message += ` (criteria: ${failing})`;
      }
      outcomes.push({
        ruleId: rule.document.id,
        fixture: test.fixture,
        expect: test.expect,
        passed,
        message,
        result,
      });
    }
  }
  return outcomes;
}
