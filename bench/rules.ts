import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { availableParallelism } from 'node:os';
import express from 'express';
import type { Encounter } from 'fhir/r4.js';
import { FhirClient } from '../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../fhir/patient-history.ts';
import { sandboxPopulationModule } from '../src/cli/sandbox-population.ts';
import { sandboxRouter } from '../src/http/sandbox-routes.ts';
import { runBacktest } from '../src/rules/backtest.ts';
import { evaluateRules } from '../src/rules/evaluate.ts';
import { loadRuleSet, type RuleSetSource } from '../src/rules/rule-loader.ts';
import { defaultRulesConfig } from '../src/rules/rules-config.ts';
import { createSandboxEhr } from '../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../src/sandbox/synthetic-patients.ts';

/**
 * Rules engine cost against what it sits next to. For each sandbox patient, in the same run and
 * over the same HTTP sandbox: the service's history retrieval (the baseline) and the evaluation of
 * the whole starter set on the record it returned. Target: evaluation <= 0.2 x retrieval (median),
 * which holds only because every FHIRPath is compiled once when the set loads (load time shown).
 * Then backtest throughput over 1,000 generated patients with one worker (baseline) and one worker
 * per core. CPU use / (wall x workers) shows whether the cores were busy (it drops when other
 * processes compete for them); each worker's event-loop utilisation shows it never waited for work.
 */
const patientCount = 30;
/** Rounds that only warm the JIT and the server (both sides alike), then rounds that are measured. */
const warmupRounds = 10;
const measuredRounds = 5;
const seed = 20261127;
const backtestPatients = 1000;

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
  const sandbox = createSandboxEhr();
  const patients = generatePatients({ count: patientCount, seed, now, notesPerEncounter: 0 });
  await sandbox.seed(patients.flatMap((patient) => patient.resources));
  const app = express();
  app.use('/fhir', sandboxRouter(sandbox));
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(baseUrl);

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
    server.close();
    await sandbox.close();
  }

  const backtest = async (workers: number) => {
    const cpuBefore = process.cpuUsage();
    const report = await runBacktest({
      source,
      population: { kind: 'generated', count: backtestPatients, seed, module: sandboxPopulationModule },
      now,
      workers,
    });
    const cpu = process.cpuUsage(cpuBefore);
    const cpuSeconds = (cpu.user + cpu.system) / 1e6;
    return {
      workers: report.workers,
      seconds: round(report.durationMs / 1000, 1),
      patientsPerSecond: round(report.patientsPerSecond, 1),
      // Includes the worker threads: 1.0 means every worker's core was busy all the time.
      cpuBusyShare: round(cpuSeconds / ((report.durationMs / 1000) * report.workers)),
      // Whether workers ever waited for work (1.0: never): independent of other load on the machine.
      workerEventLoopUtilization: report.workerUtilization,
    };
  };
  const oneWorker = await backtest(1);
  const perCore = await backtest(availableParallelism());

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
      oneWorker,
      perCore,
      speedup: round(perCore.patientsPerSecond / oneWorker.patientsPerSecond),
    },
  };
}
