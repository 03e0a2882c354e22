import path from 'node:path';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { Logger } from '../log.ts';
import { evaluateRules, type RuleEvaluation } from './evaluate.ts';
import { InMemoryNudgeStore, type NudgeOutcomeKind, type NudgeStore } from './nudge-store.ts';
import type { RuleSetSource } from './rule-loader.ts';
import { admitRuleLogic } from './rule-logic.ts';
import type { RuleTrigger } from './rule-schema.ts';
import type { RuleSet } from './rule-set.ts';
import { createRuleSetHolder, type RuleSetHolder } from './rule-set-watcher.ts';
import type { RulesConfig } from './rules-config.ts';
import { SqliteNudgeStore } from './sqlite-nudge-store.ts';

/**
 * The rules engine as the composition root uses it: the hot-reloaded rule set, the outcome store,
 * and the one call the pipeline makes per encounter event. Built once at start (it refuses to
 * start on an invalid rule set) and closed on shutdown.
 */
export interface RulesRuntime {
  current(): RuleSet;
  readonly store: NudgeStore;
  readonly holder: RuleSetHolder;
  /**
   * The nudges for one event: the current set, suppression windows and the per-encounter cap
   * applied, shown nudges recorded as delivered (idempotent: a retried job gets the same ids).
   */
  evaluate(
    record: PatientRecord,
    options: { trigger: RuleTrigger; now?: Date; occasionId?: string },
  ): Promise<RuleEvaluation>;
  /** What the clinician did with a nudge in the review app (sign-off: accepted or ignored; rejection: overridden). */
  recordReviewOutcome(nudgeId: string, outcome: NudgeOutcomeKind, reason?: string, at?: Date): Promise<void>;
  close(): Promise<void>;
}

export function ruleSetSource(config: RulesConfig): RuleSetSource {
  return {
    directory: config.directory,
    valueSetFile: config.valueSetFile,
    cqlModelDirectory: config.cqlModelDirectory,
    defaultSuppressionDays: config.suppression.defaultDays,
    perEncounterCap: config.perEncounterCap,
  };
}

export async function createRulesRuntime(
  config: RulesConfig,
  options: {
    logger: Logger;
    dataDirectory?: string;
    store?: NudgeStore;
    /** Every set that starts serving (the first one included), and every refused reload: for metrics. */
    onRuleSet?: (change: { outcome: 'loaded'; ruleSet: RuleSet } | { outcome: 'refused' }) => void;
  },
): Promise<RulesRuntime> {
  const storeFile =
    config.storeFile ??
    (options.dataDirectory ? path.join(options.dataDirectory, 'rules.sqlite') : undefined);
  const store = options.store ?? (storeFile ? new SqliteNudgeStore(storeFile) : new InMemoryNudgeStore());
  const holder = await createRuleSetHolder(ruleSetSource(config), {
    logger: options.logger,
    admit: (ruleSet) => admitRuleLogic(store, ruleSet),
    watch: config.watch,
    rescanIntervalMs: config.watch ? config.rescanSeconds * 1000 : 0,
    onReload: (ruleSet) => options.onRuleSet?.({ outcome: 'loaded', ruleSet }),
    onRefused: () => options.onRuleSet?.({ outcome: 'refused' }),
  }).catch(async (error: unknown) => {
    if (!options.store) await store.close();
    throw error;
  });
  options.onRuleSet?.({ outcome: 'loaded', ruleSet: holder.current() });
  return {
    current: () => holder.current(),
    store,
    holder,
    async evaluate(record, evaluateOptions) {
      const ruleSet = holder.current();
      const evaluation = await evaluateRules(ruleSet, record, { ...evaluateOptions, store });
      const failed = evaluation.results.filter((result) => result.status === 'error');
      if (failed.length > 0) {
        options.logger.warn(
          { rules: failed.map((result) => result.ruleId), encounterId: record.encounter.id },
          'rules failed to evaluate; the other rules still apply',
        );
      }
      options.logger.info(
        {
          encounterId: record.encounter.id,
          fingerprint: ruleSet.fingerprint,
          shown: evaluation.nudges.length,
          suppressed: evaluation.results.filter((result) => result.status === 'suppressed').length,
          capped: evaluation.results.filter((result) => result.status === 'capped').length,
          silent: evaluation.results.filter((result) => result.silent).length,
        },
        'rules evaluated',
      );
      return evaluation;
    },
    async recordReviewOutcome(nudgeId, outcome, reason, at = new Date()) {
      await store.recordOutcome({ nudgeId, outcome, reason, source: 'review-app', recordedAt: at });
    },
    async close() {
      holder.close();
      await store.close();
    },
  };
}
