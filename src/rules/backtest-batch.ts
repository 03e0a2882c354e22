import type { PatientRecord } from '../../fhir/patient-record.ts';
import { evaluateRules } from './evaluate.ts';
import type { NudgeStore } from './nudge-store.ts';
import type { RuleSet } from './rule-set.ts';

/**
 * One batch of a backtest, evaluated where it is (a worker thread or the thread that started the
 * backtest): counts per rule, the first error, and optionally a row per patient and rule.
 */
export interface BacktestPatientRow {
  patientId: string;
  ruleId: string;
  ruleVersion: string;
  mode: 'active' | 'silent';
  /** fired (and shown), suppressed, capped, not-fired, error. */
  status: string;
  /** The logic fired, whether or not suppression or the cap then held it back. */
  fired: boolean;
  shown: boolean;
  /** `criterion=true|false|skipped`, in rule order. */
  criteria: string[];
  evidence: string[];
  error?: string;
}

export interface BatchResult {
  patients: number;
  fired: Record<string, number>;
  shown: Record<string, number>;
  suppressed: Record<string, number>;
  capped: Record<string, number>;
  errors: Record<string, number>;
  errorMessages: Record<string, string>;
  rows?: BacktestPatientRow[];
}

export interface BatchOptions {
  now: Date;
  store: NudgeStore | undefined;
  cqlParameters: Record<string, unknown>;
  collectRows: boolean;
}

export async function evaluateBatch(
  ruleSet: RuleSet,
  records: PatientRecord[],
  options: BatchOptions,
): Promise<BatchResult> {
  const result: BatchResult = {
    patients: records.length,
    fired: {},
    shown: {},
    suppressed: {},
    capped: {},
    errors: {},
    errorMessages: {},
    ...(options.collectRows ? { rows: [] } : {}),
  };
  const count = (totals: Record<string, number>, ruleId: string) => {
    totals[ruleId] = (totals[ruleId] ?? 0) + 1;
  };
  const modes = new Map(ruleSet.rules.map((rule) => [rule.document.id, rule.document.mode]));
  for (const record of records) {
    // The service's own cap and (with its store) suppression: what the clinician would actually see.
    const evaluation = await evaluateRules(ruleSet, record, {
      trigger: 'encounter-planned',
      anyTrigger: true,
      now: options.now,
      store: options.store,
      cqlParameters: options.cqlParameters,
    });
    for (const ruleResult of evaluation.results) {
      if (ruleResult.status === 'disabled') continue;
      const logicFired = ['fired', 'suppressed', 'capped'].includes(ruleResult.status);
      const isShown = ruleResult.status === 'fired' && !ruleResult.silent;
      if (logicFired) count(result.fired, ruleResult.ruleId);
      if (isShown) count(result.shown, ruleResult.ruleId);
      if (ruleResult.status === 'suppressed') count(result.suppressed, ruleResult.ruleId);
      if (ruleResult.status === 'capped') count(result.capped, ruleResult.ruleId);
      if (ruleResult.status === 'error') {
        count(result.errors, ruleResult.ruleId);
        result.errorMessages[ruleResult.ruleId] ??= ruleResult.error ?? 'error';
      }
      result.rows?.push({
        patientId: record.patient.id ?? '',
        ruleId: ruleResult.ruleId,
        ruleVersion: ruleResult.ruleVersion,
        mode: modes.get(ruleResult.ruleId) ?? 'active',
        status: ruleResult.status,
        fired: logicFired,
        shown: isShown,
        criteria: ruleResult.criteria.map(
          (criterion) => `${criterion.id}=${criterion.skipped ? 'skipped' : criterion.holds}`,
        ),
        evidence: [...new Set(ruleResult.criteria.flatMap((criterion) => criterion.evidence))],
        ...(ruleResult.error ? { error: ruleResult.error } : {}),
      });
    }
  }
  return result;
}

/**
 * The service's store as suppression reads it, never written: a backtest shows what would be held back
 * today, and must not itself count as a delivery.
 */
export async function readOnlyStore(file: string | undefined): Promise<NudgeStore | undefined> {
  if (!file) return undefined;
  const { SqliteNudgeStore } = await import('./sqlite-nudge-store.ts');
  const store = new SqliteNudgeStore(file);
  return {
    lastDelivery: (ruleId, patientId, excludingOccasionId) =>
      store.lastDelivery(ruleId, patientId, excludingOccasionId),
    findDelivery: (nudgeId) => store.findDelivery(nudgeId),
    deliveriesForOccasion: (patientId, occasionId) => store.deliveriesForOccasion(patientId, occasionId),
    statistics: () => store.statistics(),
    ruleLogicConflicts: (rules) => store.ruleLogicConflicts(rules),
    snoozedUntil: (ruleId, patientId, at) => store.snoozedUntil(ruleId, patientId, at),
    recordDelivery: async () => {},
    recordOutcome: async () => {},
    recordRuleLogic: async () => {},
    recordSnooze: async () => {},
    close: () => store.close(),
  };
}
