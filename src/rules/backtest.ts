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
  /** Keep one row per patient and rule (for `--csv` and `--compare`). */
  collectRows?: boolean;
  /**
   * The service's store of deliveries, read (never written) to show which firings suppression would
   * hold back today; without it only the per-encounter cap is applied.
   */
  storeFile?: string;
}

/** One patient and one rule: what a team reads to see why a rule fired or not for whom. */
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
  | { type: 'ready'; rules: { ruleId: string; ruleVersion: string; title: string }[] }
  | { type: 'failed'; message: string }
  | {
      type: 'batch-done';
      patients: number;
      fired: Record<string, number>;
      shown: Record<string, number>;
      suppressed: Record<string, number>;
      capped: Record<string, number>;
      errors: Record<string, number>;
      errorMessages: Record<string, string>;
      rows?: BacktestPatientRow[];
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
  const shown = new Map<string, number>();
  const suppressed = new Map<string, number>();
  const capped = new Map<string, number>();
  const firstErrors = new Map<string, string>();
  const rows: BacktestPatientRow[] = [];
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
          collectRows: options.collectRows ?? false,
          storeFile: options.storeFile,
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
        const add = (totals: Map<string, number>, counts: Record<string, number>) => {
          for (const [ruleId, count] of Object.entries(counts))
            totals.set(ruleId, (totals.get(ruleId) ?? 0) + count);
        };
        add(errors, message.errors);
        add(shown, message.shown);
        add(suppressed, message.suppressed);
        add(capped, message.capped);
        if (message.rows) rows.push(...message.rows);
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
      shownPatients: shown.get(rule.ruleId) ?? 0,
      suppressedPatients: suppressed.get(rule.ruleId) ?? 0,
      cappedPatients: capped.get(rule.ruleId) ?? 0,
      errors: errors.get(rule.ruleId) ?? 0,
      ...(firstErrors.has(rule.ruleId) ? { firstError: firstErrors.get(rule.ruleId) } : {}),
    })),
    ...(options.collectRows ? { rows } : {}),
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
