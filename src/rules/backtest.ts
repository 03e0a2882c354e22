import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { type BacktestPatientRow, type BatchResult, evaluateBatch, readOnlyStore } from './backtest-batch.ts';
import { loadRuleSet, type RuleSetSource } from './rule-loader.ts';
import { formatLoadError, type RuleSet } from './rule-set.ts';

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
  /** Keep one row per patient and rule (for `--csv` and `--compare`). */
  collectRows?: boolean;
  /**
   * The service's store of deliveries, read (never written) to show which firings suppression would
   * hold back today; without it only the per-encounter cap is applied.
   */
  storeFile?: string;
  /**
   * The set compiled by the caller, or its compilation under way (it then overlaps the worker threads'
   * start-up); absent, it is loaded here. This thread evaluates batches with it too.
   */
  ruleSet?: RuleSet | Promise<RuleSet>;
}

export type { BacktestPatientRow };

export interface RuleBacktestRow {
  ruleId: string;
  ruleVersion: string;
  title: string;
  firedPatients: number;
  /** Of those, shown after suppression (against the service's store, when given) and the per-encounter cap. */
  shownPatients: number;
  suppressedPatients: number;
  cappedPatients: number;
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
  /** With `collectRows`: one row per patient and enabled rule, in no particular order. */
  rows?: BacktestPatientRow[];
}

export type WorkerBatch = { indices: number[] } | { records: PatientRecord[] };
export type WorkerMessage =
  | { type: 'ready' }
  | { type: 'failed'; message: string }
  | ({ type: 'batch-done' } & BatchResult);

/**
 * The thread that starts the backtest evaluates batches too, from the rule set it already holds: `workers`
 * counts it, so one worker costs no thread start-up at all, and each further worker is a thread that
 * joins as soon as it has compiled the set. On two cores, two workers then beat one even for a short
 * run, where starting two threads (imports and compilation, ~0.6 s each) used to eat the gain.
 */
export async function runBacktest(options: BacktestOptions): Promise<BacktestReport> {
  const started = performance.now();
  const total = options.population.count;
  const workerCount = Math.max(
    1,
    Math.min(options.workers ?? defaultWorkers(total), Math.ceil(total / 10) || 1),
  );
  const batchSize = options.batchSize ?? 25;
  const nextBatch = batchSource(options.population, batchSize);
  const fired = new Map<string, number>();
  const errors = new Map<string, number>();
  const shown = new Map<string, number>();
  const suppressed = new Map<string, number>();
  const capped = new Map<string, number>();
  const firstErrors = new Map<string, string>();
  const rows: BacktestPatientRow[] = [];
  let done = 0;
  const workerUtilization: number[] = [];
  const seed = options.population.kind === 'generated' ? (options.population.seed ?? 1) : 1;
  const populationModule =
    options.population.kind === 'generated' && options.population.module
      ? options.population.module
      : new URL('./generated-population.ts', import.meta.url).href;

  const merge = (result: BatchResult) => {
    done += result.patients;
    const add = (totals: Map<string, number>, counts: Record<string, number>) => {
      for (const [ruleId, count] of Object.entries(counts))
        totals.set(ruleId, (totals.get(ruleId) ?? 0) + count);
    };
    add(fired, result.fired);
    add(errors, result.errors);
    add(shown, result.shown);
    add(suppressed, result.suppressed);
    add(capped, result.capped);
    if (result.rows) rows.push(...result.rows);
    for (const [ruleId, text] of Object.entries(result.errorMessages))
      if (!firstErrors.has(ruleId)) firstErrors.set(ruleId, text);
    options.onProgress?.(done, total);
  };

  let failure: Error | undefined;
  const runWorker = () =>
    new Promise<void>((resolve, reject) => {
      const worker = new Worker(new URL('./backtest-worker.ts', import.meta.url), {
        workerData: {
          source: options.source,
          now: options.now.toISOString(),
          cqlParameters: options.cqlParameters ?? {},
          collectRows: options.collectRows ?? false,
          storeFile: options.storeFile,
          seed,
          populationModule,
        },
      });
      const finish = (error?: Error) => {
        workerUtilization.push(Number(worker.performance.eventLoopUtilization().utilization.toFixed(3)));
        worker.removeAllListeners();
        void worker.terminate();
        if (error) {
          failure ??= error;
          reject(error);
        } else resolve();
      };
      const send = async () => {
        try {
          const batch = failure ? undefined : await nextBatch();
          if (batch) worker.postMessage(batch);
          else finish();
        } catch (error) {
          finish(error instanceof Error ? error : new Error(String(error)));
        }
      };
      worker.on('message', (message: WorkerMessage) => {
        if (message.type === 'failed') return finish(new Error(message.message));
        if (message.type === 'ready') return void send();
        merge(message);
        void send();
      });
      worker.on('error', (error) => finish(error));
      worker.on('exit', (code) => {
        if (code !== 0) finish(new Error(`backtest worker exited with code ${code}`));
      });
    });

  const runHere = async (compiled: RuleSet) => {
    try {
      await evaluateHere(compiled);
    } catch (error) {
      // The worker threads stop at their next batch; the error is the backtest's.
      failure ??= error instanceof Error ? error : new Error(String(error));
      throw failure;
    }
  };
  const evaluateHere = async (compiled: RuleSet) => {
    const population = (await import(populationModule)) as {
      populationRecord(index: number, now: Date, seed: number): PatientRecord;
    };
    const store = await readOnlyStore(options.storeFile);
    try {
      for (let batch = await nextBatch(); batch && !failure; batch = await nextBatch()) {
        const records =
          'indices' in batch
            ? batch.indices.map((index) => population.populationRecord(index, options.now, seed))
            : batch.records;
        merge(
          await evaluateBatch(compiled, records, {
            now: options.now,
            store,
            cqlParameters: options.cqlParameters ?? {},
            collectRows: options.collectRows ?? false,
          }),
        );
        // Between batches, let the worker threads' results in and hand them their next batch.
        await new Promise((resolve) => setImmediate(resolve));
      }
    } finally {
      await store?.close();
    }
  };

  // Threads first: their imports and compilation overlap this thread's own.
  const threads = Array.from({ length: workerCount - 1 }, runWorker);
  // Awaited below; until then a thread's failure must not count as an unhandled rejection.
  for (const thread of threads) thread.catch(() => undefined);
  let ruleSet: RuleSet;
  try {
    ruleSet = (await options.ruleSet) ?? (await compiledSet(options.source));
  } catch (error) {
    failure = error instanceof Error ? error : new Error(String(error));
    await Promise.allSettled(threads);
    throw failure;
  }
  const rules = ruleSet.rules
    .filter((rule) => rule.document.enabled)
    .map((rule) => ({
      ruleId: rule.document.id,
      ruleVersion: rule.document.version,
      title: rule.document.title,
    }));
  await Promise.all([runHere(ruleSet), ...threads]);
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
      shownPatients: shown.get(rule.ruleId) ?? 0,
      suppressedPatients: suppressed.get(rule.ruleId) ?? 0,
      cappedPatients: capped.get(rule.ruleId) ?? 0,
      errors: errors.get(rule.ruleId) ?? 0,
      ...(firstErrors.has(rule.ruleId) ? { firstError: firstErrors.get(rule.ruleId) } : {}),
    })),
    ...(options.collectRows ? { rows } : {}),
  };
}

/**
 * A worker thread costs about a second of CPU before its first patient (imports, compiling the set,
 * a cold JIT): worth it from a few thousand patients on, not for a thousand (measured in bench/rules.ts).
 */
const patientsPerExtraWorker = 3000;

function defaultWorkers(patients: number): number {
  return Math.max(1, Math.min(availableParallelism(), Math.floor(patients / patientsPerExtraWorker) + 1));
}

async function compiledSet(source: RuleSetSource): Promise<RuleSet> {
  const loaded = await loadRuleSet(source);
  if (!loaded.ok) throw new Error(loaded.errors.map(formatLoadError).join('\n'));
  return loaded.ruleSet;
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

/** The run a CSV file came from, written on every row so a filtered or merged sheet keeps it. */
export interface BacktestRun {
  runAt: Date;
  evaluatedAt: Date;
  /** `sandbox (seed N)`, `generated (seed N)` or the FHIR base URL. */
  source: string;
}

/** One row per patient and rule: fired, shown, each criterion, the evidence and the error. */
export function backtestPatientCsv(report: BacktestReport, run: BacktestRun): string {
  const header =
    'run_at,evaluated_at,source,patient_id,rule_id,rule_version,mode,status,fired,shown,criteria,evidence,error';
  const rows = [...(report.rows ?? [])]
    .sort(
      (left, right) =>
        left.patientId.localeCompare(right.patientId) || left.ruleId.localeCompare(right.ruleId),
    )
    .map((row) =>
      [
        run.runAt.toISOString(),
        run.evaluatedAt.toISOString(),
        csvField(run.source),
        csvField(row.patientId),
        row.ruleId,
        row.ruleVersion,
        row.mode,
        row.status,
        row.fired,
        row.shown,
        csvField(row.criteria.join(';')),
        csvField(row.evidence.join(' ')),
        csvField(row.error ?? ''),
      ].join(','),
    );
  return `${[header, ...rows].join('\n')}\n`;
}

/** Patients whose result for a rule differs between two backtests of the same population (`--compare`). */
export interface BacktestChange {
  ruleId: string;
  patientId: string;
  before: { version: string; status: string } | undefined;
  after: { version: string; status: string } | undefined;
}

export function backtestChanges(before: BacktestReport, after: BacktestReport): BacktestChange[] {
  const key = (row: BacktestPatientRow) => `${row.ruleId}\0${row.patientId}`;
  const earlier = new Map((before.rows ?? []).map((row) => [key(row), row]));
  const later = new Map((after.rows ?? []).map((row) => [key(row), row]));
  const changes: BacktestChange[] = [];
  for (const id of new Set([...earlier.keys(), ...later.keys()])) {
    const left = earlier.get(id);
    const right = later.get(id);
    const outcome = (row: BacktestPatientRow | undefined) =>
      row === undefined ? 'absent' : row.status === 'error' ? 'error' : row.fired ? 'fires' : 'does-not-fire';
    if (outcome(left) === outcome(right)) continue;
    const [ruleId, patientId] = id.split('\0');
    changes.push({
      ruleId,
      patientId,
      before: left && { version: left.ruleVersion, status: outcome(left) },
      after: right && { version: right.ruleVersion, status: outcome(right) },
    });
  }
  return changes.sort(
    (left, right) => left.ruleId.localeCompare(right.ruleId) || left.patientId.localeCompare(right.patientId),
  );
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
