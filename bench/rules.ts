import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { loadavg } from 'node:os';
import { fileURLToPath } from 'node:url';
import type { Encounter } from 'fhir/r4.js';
import { FhirClient } from '../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../fhir/patient-history.ts';
import { evaluateRules } from '../src/rules/evaluate.ts';
import { loadRuleSet, type RuleSetSource } from '../src/rules/rule-loader.ts';
import { defaultRulesConfig } from '../src/rules/rules-config.ts';
import { generatePatients } from '../src/sandbox/synthetic-patients.ts';

/**
 * Rules engine cost against what it sits next to. For each sandbox patient, in the same run: the
 * service's history retrieval from a FHIR server over HTTP in a process of its own (the baseline: an
 * in-process server makes retrieval unrealistically cheap) and the evaluation of the whole starter set
 * on the record it returned. Target: evaluation <= 0.2 x retrieval (median), which holds only because
 * every FHIRPath is compiled once when the set loads (load time shown).
 * Then `rules backtest` of 1,000 sandbox patients, each run in a fresh process as a team runs it, with
 * one worker (the baseline: the CLI's own thread) and with two (plus one worker thread), alternated
 * over rounds so that load from other processes falls on both alike; the speedup is the median of the
 * paired rounds of whole-process wall time (target > 1). The machine's load average is shown: with
 * both cores taken by other processes a second thread cannot help.
 */
const patientCount = 30;
/** Rounds that only warm the JIT and the server (both sides alike), then rounds that are measured. */
const warmupRounds = 10;
const measuredRounds = 5;
const seed = 20261127;
const backtestPatients = 1000;
const backtestRounds = 3;
const serverScript = fileURLToPath(new URL('./rules-fhir-server.support.ts', import.meta.url));
const cliScript = fileURLToPath(new URL('../src/cli/rules.ts', import.meta.url));

const percentile = (values: number[], fraction: number) => {
  const sorted = [...values].sort((left, right) => left - right);
  return sorted[Math.min(sorted.length - 1, Math.floor(fraction * sorted.length))];
};
const round = (value: number, digits = 2) => Number(value.toFixed(digits));

export async function run(): Promise<Record<string, unknown>> {
  const source: RuleSetSource = {
    directory: defaultRulesConfig.directory,
    valueSetFile: defaultRulesConfig.valueSetFile,
    defaultSuppressionDays: defaultRulesConfig.suppression.defaultDays,
    perEncounterCap: defaultRulesConfig.perEncounterCap,
  };
  const loadStarted = performance.now();
  const loaded = await loadRuleSet(source);
  const loadMs = performance.now() - loadStarted;
  if (!loaded.ok) throw new Error('starter rules do not load');
  const ruleSet = loaded.ruleSet;

  const now = new Date();
  // The same patients the server process seeds (deterministic for the seed and date), for their encounters.
  const patients = generatePatients({ count: patientCount, seed, now, notesPerEncounter: 0 });
  const server = spawn(
    process.execPath,
    [serverScript, String(patientCount), String(seed), now.toISOString()],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const [firstOutput] = (await once(server.stdout, 'data')) as [Buffer];
  const baseUrl = firstOutput.toString('utf8').split('\n')[0].trim();

  const retrievalMs: number[] = [];
  const evaluationMs: number[] = [];
  const ratios: number[] = [];
  let resources = 0;
  try {
    const client = new FhirClient({ baseUrl });
    for (let roundNumber = 0; roundNumber < warmupRounds + measuredRounds; roundNumber += 1) {
      for (const patient of patients) {
        const encounter = patient.resources
          .filter((resource): resource is Encounter => resource.resourceType === 'Encounter')
          .sort((left, right) => (right.period?.start ?? '').localeCompare(left.period?.start ?? ''))[0];
        const retrievalStarted = performance.now();
        const record = await retrievePatientRecord(client, encounter, {
          draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
        });
        const retrieval = performance.now() - retrievalStarted;
        const evaluationStarted = performance.now();
        await evaluateRules(ruleSet, record, { trigger: 'encounter-planned', anyTrigger: true, now });
        const evaluation = performance.now() - evaluationStarted;
        // A long-running service evaluates and retrieves warm: the first rounds only warm both sides.
        if (roundNumber < warmupRounds) continue;
        retrievalMs.push(retrieval);
        evaluationMs.push(evaluation);
        ratios.push(evaluation / retrieval);
        resources += record.observations.length + record.conditions.length + record.medications.length;
      }
    }
  } finally {
    server.kill('SIGTERM');
    await once(server, 'exit');
  }

  // `rules backtest` as a team runs it: a fresh process each time (cold, like the CLI), wall time of
  // the backtest as the CLI reports it and of the whole process.
  const backtest = async (workers: number) => {
    const started = performance.now();
    const child = spawn(
      process.execPath,
      [
        cliScript,
        'backtest',
        '--source',
        'sandbox',
        '--patients',
        String(backtestPatients),
        '--workers',
        String(workers),
        '--seed',
        String(seed),
        '--now',
        now.toISOString(),
      ],
      { stdio: ['ignore', 'pipe', 'ignore'] },
    );
    let output = '';
    child.stdout.on('data', (chunk: Buffer) => {
      output += chunk.toString('utf8');
    });
    await once(child, 'exit');
    const processSeconds = (performance.now() - started) / 1000;
    const reported = /(\d+) patients in ([\d.]+) s/.exec(output);
    if (!reported) throw new Error(`rules backtest printed no summary: ${output.slice(0, 200)}`);
    return {
      workers,
      backtestSeconds: Number(reported[2]),
      processSeconds: round(processSeconds),
    };
  };
  const loadAverageBefore = round(loadavg()[0]);
  const oneWorkerRounds: Awaited<ReturnType<typeof backtest>>[] = [];
  const twoWorkerRounds: Awaited<ReturnType<typeof backtest>>[] = [];
  for (let roundNumber = 0; roundNumber < backtestRounds; roundNumber += 1) {
    oneWorkerRounds.push(await backtest(1));
    twoWorkerRounds.push(await backtest(2));
  }
  const speedups = oneWorkerRounds.map(
    (one, index) => one.processSeconds / twoWorkerRounds[index].processSeconds,
  );

  const retrievalMedian = percentile(retrievalMs, 0.5);
  const evaluationMedian = percentile(evaluationMs, 0.5);
  return {
    rules: ruleSet.rules.length,
    ruleSetLoadMs: round(loadMs, 0),
    patients: patientCount,
    samples: retrievalMs.length,
    meanClinicalResourcesPerPatient: round(resources / retrievalMs.length, 1),
    retrievalMs: { median: round(retrievalMedian), p99: round(percentile(retrievalMs, 0.99)) },
    evaluationMs: { median: round(evaluationMedian), p99: round(percentile(evaluationMs, 0.99)) },
    evaluationOverRetrieval: {
      ofMedians: round(evaluationMedian / retrievalMedian),
      medianPerPatient: round(percentile(ratios, 0.5)),
      p99PerPatient: round(percentile(ratios, 0.99)),
      target: 0.2,
    },
    backtest: {
      patients: backtestPatients,
      loadAverageBefore,
      loadAverageAfter: round(loadavg()[0]),
      oneWorker: oneWorkerRounds,
      twoWorkers: twoWorkerRounds,
      speedupPerRound: speedups.map((speedup) => round(speedup)),
      speedup: round(percentile(speedups, 0.5)),
      target: '> 1',
    },
  };
}
