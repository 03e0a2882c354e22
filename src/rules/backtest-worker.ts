import { parentPort, workerData } from 'node:worker_threads';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { WorkerBatch, WorkerMessage } from './backtest.ts';
import { evaluateBatch, readOnlyStore } from './backtest-batch.ts';
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
    const result = await evaluateBatch(ruleSet, records, {
      now,
      store,
      cqlParameters: data.cqlParameters,
      collectRows: data.collectRows,
    });
    post({ type: 'batch-done', ...result });
  });
  post({ type: 'ready' });
}
