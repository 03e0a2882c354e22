import path from 'node:path';
import type { NudgeStore } from './nudge-store.ts';
import type { RuleLoadError, RuleSet } from './rule-set.ts';

/**
 * One version, one logic. Outcomes and `rules stats` are counted per rule version; if the logic behind
 * a version changed, its numbers would mix two rules. The service records the logic fingerprint of
 * every (id, version) it serves and refuses a set that changes the logic under a version already served.
 */
export async function ruleLogicProblems(store: NudgeStore, ruleSet: RuleSet): Promise<RuleLoadError[]> {
  const served = ruleSet.rules.filter((rule) => rule.document.enabled);
  const conflicts = await store.ruleLogicConflicts(
    served.map((rule) => ({
      ruleId: rule.document.id,
      ruleVersion: rule.document.version,
      logicFingerprint: rule.logicFingerprint,
    })),
  );
  return conflicts.map((conflict) => {
    const rule = served.find(
      (candidate) =>
        candidate.document.id === conflict.ruleId && candidate.document.version === conflict.ruleVersion,
    );
    const file = path.join(ruleSet.directory, rule?.file ?? '');
    const relative = path.relative(process.cwd(), file);
    return {
      file: relative.startsWith('..') || path.isAbsolute(relative) ? file : relative,
      line: rule?.versionLine,
      message: `rule ${conflict.ruleId} version ${conflict.ruleVersion} has served other logic since ${conflict.firstServedAt.toISOString()}: bump the version (outcomes are counted per version, and must not mix two logics)`,
    };
  });
}

/** The check, then the record: the set about to serve claims its versions' logic. */
export async function admitRuleLogic(
  store: NudgeStore,
  ruleSet: RuleSet,
  now = new Date(),
): Promise<RuleLoadError[]> {
  const problems = await ruleLogicProblems(store, ruleSet);
  if (problems.length > 0) return problems;
  await store.recordRuleLogic(
    ruleSet.rules
      .filter((rule) => rule.document.enabled)
      .map((rule) => ({
        ruleId: rule.document.id,
        ruleVersion: rule.document.version,
        logicFingerprint: rule.logicFingerprint,
        firstServedAt: now,
      })),
  );
  return [];
}
