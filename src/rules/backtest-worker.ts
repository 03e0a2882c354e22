import { parentPort, workerData } from 'node:worker_threads';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { WorkerBatch, WorkerMessage } from './backtest.ts';
import { evaluateRules } from './evaluate.ts';
import { loadRuleSet, type RuleSetSource } from './rule-loader.ts';
import { formatLoadError } from './rule-set.ts';

/** One backtest thread: compiles the rule set once, then evaluates the batches it is handed. */
const data = workerData as {
  source: RuleSetSource;
  now: string;
  seed: number;
  populationModule: string;
  cqlParameters: Record<string, unknown>;
};
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
    const errors: Record<string, number> = {};
    const errorMessages: Record<string, string> = {};
    for (const record of records) {
      const evaluation = await evaluateRules(ruleSet, record, {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        perEncounterCap: Number.MAX_SAFE_INTEGER,
        cqlParameters: data.cqlParameters,
      });
      for (const result of evaluation.results) {
        if (result.status === 'fired') fired[result.ruleId] = (fired[result.ruleId] ?? 0) + 1;
        if (result.status === 'error') {
          errors[result.ruleId] = (errors[result.ruleId] ?? 0) + 1;
          errorMessages[result.ruleId] ??= result.error ?? 'error';
        }
      }
    }
    post({ type: 'batch-done', patients: records.length, fired, errors, errorMessages });
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
