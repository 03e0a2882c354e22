import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { RuleSetSource } from './rule-loader.ts';

/**
 * `rules backtest`: every rule across a population, spread over worker threads (one per core) so a
 * large backtest keeps both cores busy. Workers compile the rule set themselves (compiled FHIRPath
 * cannot cross threads) and pull batches, so a slow batch never leaves a core idle.
 */
export type BacktestPopulation =
  /**
   * Patients built inside the workers by index. `module` (a file URL) exports
   * `populationRecord(index, now, seed): PatientRecord`; default: generated-population.ts.
   */
  | { kind: 'generated'; count: number; seed?: number; module?: string }
  /** Records fetched elsewhere (a FHIR server, the sandbox), pulled batch by batch. */
  | { kind: 'records'; count: number; batches: AsyncIterable<PatientRecord[]> };

export interface BacktestOptions {
  source: RuleSetSource;
  population: BacktestPopulation;
  now: Date;
  workers?: number;
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** CQL parameter values over the rules' own (`--parameter "Measurement Period=2021"`). */
  cqlParameters?: Record<string, unknown>;
}

export interface RuleBacktestRow {
  ruleId: string;
  ruleVersion: string;
  title: string;
  firedPatients: number;
  errors: number;
  /** What went wrong the first time the rule failed (errors are never counted as "did not fire"). */
  firstError?: string;
}

export interface BacktestReport {
  patients: number;
  workers: number;
  durationMs: number;
  patientsPerSecond: number;
  /**
   * Per worker: share of its lifetime its event loop was running (not waiting for a batch). Near 1
   * means the workers never starved; with one worker per core, that keeps every core busy.
   */
  workerUtilization: number[];
  rules: RuleBacktestRow[];
}

export type WorkerBatch = { indices: number[] } | { records: PatientRecord[] };
export type WorkerMessage =
  | { type: 'ready'; rules: { ruleId: string; ruleVersion: string; title: string }[] }
  | { type: 'failed'; message: string }
  | {
      type: 'batch-done';
      patients: number;
      fired: Record<string, number>;
      errors: Record<string, number>;
      errorMessages: Record<string, string>;
    };

export async function runBacktest(options: BacktestOptions): Promise<BacktestReport> {
  const started = performance.now();
  const total = options.population.count;
  const workerCount = Math.max(
    1,
    Math.min(options.workers ?? availableParallelism(), Math.ceil(total / 10) || 1),
  );
  const batchSize = options.batchSize ?? 25;
  const nextBatch = batchSource(options.population, batchSize);
  const fired = new Map<string, number>();
  const errors = new Map<string, number>();
  const firstErrors = new Map<string, string>();
  let rules: { ruleId: string; ruleVersion: string; title: string }[] = [];
  let done = 0;
  const workerUtilization: number[] = [];

  const runWorker = () =>
    new Promise<void>((resolve, reject) => {
      const worker = new Worker(new URL('./backtest-worker.ts', import.meta.url), {
        workerData: {
          source: options.source,
          now: options.now.toISOString(),
          cqlParameters: options.cqlParameters ?? {},
          seed: options.population.kind === 'generated' ? (options.population.seed ?? 1) : 1,
          populationModule:
            options.population.kind === 'generated' && options.population.module
              ? options.population.module
              : new URL('./generated-population.ts', import.meta.url).href,
        },
      });
      const finish = (error?: Error) => {
        workerUtilization.push(Number(worker.performance.eventLoopUtilization().utilization.toFixed(3)));
        worker.removeAllListeners();
        void worker.terminate();
        if (error) reject(error);
        else resolve();
      };
      const send = async () => {
        try {
          const batch = await nextBatch();
          if (batch) worker.postMessage(batch);
          else finish();
        } catch (error) {
          finish(error instanceof Error ? error : new Error(String(error)));
        }
      };
      worker.on('message', (message: WorkerMessage) => {
        if (message.type === 'failed') return finish(new Error(message.message));
        if (message.type === 'ready') {
          rules = message.rules;
          return void send();
        }
        done += message.patients;
        for (const [ruleId, count] of Object.entries(message.fired))
          fired.set(ruleId, (fired.get(ruleId) ?? 0) + count);
        for (const [ruleId, count] of Object.entries(message.errors))
          errors.set(ruleId, (errors.get(ruleId) ?? 0) + count);
        for (const [ruleId, text] of Object.entries(message.errorMessages))
          if (!firstErrors.has(ruleId)) firstErrors.set(ruleId, text);
        options.onProgress?.(done, total);
        void send();
      });
      worker.on('error', (error) => finish(error));
      worker.on('exit', (code) => {
        if (code !== 0) finish(new Error(`backtest worker exited with code ${code}`));
      });
    });

  await Promise.all(Array.from({ length: workerCount }, runWorker));
  const durationMs = performance.now() - started;
  return {
    patients: done,
    workers: workerCount,
    durationMs,
    patientsPerSecond: done / (durationMs / 1000),
    workerUtilization,
    rules: rules.map((rule) => ({
      ...rule,
      firedPatients: fired.get(rule.ruleId) ?? 0,
      errors: errors.get(rule.ruleId) ?? 0,
      ...(firstErrors.has(rule.ruleId) ? { firstError: firstErrors.get(rule.ruleId) } : {}),
    })),
  };
}

/** Hands out batches one at a time; concurrent callers never get the same patients. */
function batchSource(
  population: BacktestPopulation,
  batchSize: number,
): () => Promise<WorkerBatch | undefined> {
  if (population.kind === 'generated') {
    let next = 0;
    return async () => {
      if (next >= population.count) return undefined;
      const indices = Array.from(
        { length: Math.min(batchSize, population.count - next) },
        (_, offset) => next + offset,
      );
      next += indices.length;
      return { indices };
    };
  }
  const iterator = population.batches[Symbol.asyncIterator]();
  let queue: Promise<unknown> = Promise.resolve();
  return () => {
    const result = queue.then(async () => {
      const step = await iterator.next();
      return step.done ? undefined : { records: step.value };
    });
    queue = result.catch(() => undefined);
    return result;
  };
}

export function backtestCsv(report: BacktestReport): string {
  const header = 'rule_id,rule_version,title,patients,fired_patients,fired_percent,errors,first_error';
  const rows = report.rules.map((rule) =>
    [
      rule.ruleId,
      rule.ruleVersion,
      csvField(rule.title),
      report.patients,
      rule.firedPatients,
      report.patients === 0 ? '0' : ((100 * rule.firedPatients) / report.patients).toFixed(1),
      rule.errors,
      csvField(rule.firstError ?? ''),
    ].join(','),
  );
  return `${[header, ...rows].join('\n')}\n`;
}

function csvField(value: string): string {
  return /[",\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}
