import { parentPort, workerData } from 'node:worker_threads';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { BacktestPatientRow, WorkerBatch, WorkerMessage } from './backtest.ts';
import { evaluateRules } from './evaluate.ts';
import type { NudgeStore } from './nudge-store.ts';
import { loadRuleSet, type RuleSetSource } from './rule-loader.ts';
import { formatLoadError } from './rule-set.ts';

/** One backtest thread: compiles the rule set once, then evaluates the batches it is handed. */
const data = workerData as {
  source: RuleSetSource;
  now: string;
  seed: number;
  populationModule: string;
  cqlParameters: Record<string, unknown>;
  collectRows: boolean;
  storeFile: string | undefined;
};

/**
 * The service's store as suppression reads it, never written: a backtest shows what would be held back
 * today, and must not itself count as a delivery.
 */
async function readOnlyStore(file: string | undefined): Promise<NudgeStore | undefined> {
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
    recordDelivery: async () => {},
    recordOutcome: async () => {},
    recordRuleLogic: async () => {},
    snoozedUntil: (ruleId, patientId, at) => store.snoozedUntil(ruleId, patientId, at),
    recordSnooze: async () => {},
    close: () => store.close(),
  };
}
const store = await readOnlyStore(data.storeFile);
const population = (await import(data.populationModule)) as {
  populationRecord(index: number, now: Date, seed: number): PatientRecord;
};
const port = parentPort!;
const post = (message: WorkerMessage) => port.postMessage(message);
const now = new Date(data.now);

const loaded = await loadRuleSet(data.source);
if (!loaded.ok) {
  post({ type: 'failed', message: loaded.errors.map(formatLoadError).join('\n') });
} else {
  const ruleSet = loaded.ruleSet;
  port.on('message', async (batch: WorkerBatch) => {
    const records =
      'indices' in batch
        ? batch.indices.map((index) => population.populationRecord(index, now, data.seed))
        : batch.records;
    const fired: Record<string, number> = {};
    const shown: Record<string, number> = {};
    const suppressed: Record<string, number> = {};
    const capped: Record<string, number> = {};
    const errors: Record<string, number> = {};
    const errorMessages: Record<string, string> = {};
    const rows: BacktestPatientRow[] = [];
    const count = (totals: Record<string, number>, ruleId: string) => {
      totals[ruleId] = (totals[ruleId] ?? 0) + 1;
    };
    for (const record of records) {
      // The service's own cap and (with its store) suppression: what the clinician would actually see.
      const evaluation = await evaluateRules(ruleSet, record, {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        store,
        cqlParameters: data.cqlParameters,
      });
      for (const result of evaluation.results) {
        if (result.status === 'disabled') continue;
        const logicFired = ['fired', 'suppressed', 'capped'].includes(result.status);
        const isShown = result.status === 'fired' && !result.silent;
        if (logicFired) count(fired, result.ruleId);
        if (isShown) count(shown, result.ruleId);
        if (result.status === 'suppressed') count(suppressed, result.ruleId);
        if (result.status === 'capped') count(capped, result.ruleId);
        if (result.status === 'error') {
          count(errors, result.ruleId);
          errorMessages[result.ruleId] ??= result.error ?? 'error';
        }
        if (data.collectRows)
          rows.push({
            patientId: record.patient.id ?? '',
            ruleId: result.ruleId,
            ruleVersion: result.ruleVersion,
            mode: result.silent
              ? 'silent'
              : (ruleSet.rules.find((rule) => rule.document.id === result.ruleId)?.document.mode ?? 'active'),
            status: result.status,
            fired: logicFired,
            shown: isShown,
            criteria: result.criteria.map(
              (criterion) => `${criterion.id}=${criterion.skipped ? 'skipped' : criterion.holds}`,
            ),
            evidence: [...new Set(result.criteria.flatMap((criterion) => criterion.evidence))],
            ...(result.error ? { error: result.error } : {}),
          });
      }
    }
    post({
      type: 'batch-done',
      patients: records.length,
      fired,
      shown,
      suppressed,
      capped,
      errors,
      errorMessages,
      ...(data.collectRows ? { rows } : {}),
    });
  });
  post({
    type: 'ready',
    rules: ruleSet.rules
      .filter((rule) => rule.document.enabled)
      .map((rule) => ({
        ruleId: rule.document.id,
        ruleVersion: rule.document.version,
        title: rule.document.title,
      })),
  });
}
