import type { Server } from 'node:http';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients, type SyntheticPatient } from '../../src/sandbox/synthetic-patients.ts';
import { runRulesCli, serveSandbox, starterSource } from './helpers.ts';

// `rules backtest --source <FHIR base>` and `rules explain --fhir`, against the sandbox EHR served
// over HTTP: records are read with the service's own history retrieval, not from memory.
const now = new Date('2026-03-01T00:00:00Z');
let sandbox: SandboxEhr;
let server: Server;
let baseUrl: string;
let patients: SyntheticPatient[];

beforeAll(async () => {
  sandbox = createSandboxEhr();
  // Patient 0 of every population has a long history (355 observations); the sandbox's batch search
  // answers without `next` links past 200 (reported to the lead), so it is left out here.
  patients = generatePatients({ count: 7, seed: 7, now, notesPerEncounter: 0 }).slice(1);
  await sandbox.seed(patients.flatMap((patient) => patient.resources));
  ({ server, baseUrl } = await serveSandbox(sandbox));
});

afterAll(async () => {
  server?.close();
  await sandbox?.close();
});

describe('backtest and explain over a FHIR server', () => {
  it('counts the same firings as evaluating the same patients in memory', async () => {
    const result = await runRulesCli([
      'backtest',
      '--source',
      baseUrl,
      '--patients',
      '6',
      '--now',
      now.toISOString(),
      '--workers',
      '2',
    ]);
    expect(result.exitCode, result.err).toBe(0);
    expect(result.out).toMatch(/6 patients in/);

    const loaded = await loadRuleSet(starterSource());
    if (!loaded.ok) throw new Error('starter rules do not load');
    const expected = new Map<string, number>();
    for (const patient of patients) {
      const evaluation = await evaluateRules(loaded.ruleSet, recordFromResources(patient.resources), {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        perEncounterCap: Number.MAX_SAFE_INTEGER,
      });
      for (const rule of evaluation.results)
        if (rule.status === 'fired') expected.set(rule.ruleId, (expected.get(rule.ruleId) ?? 0) + 1);
    }
    expect([...expected.values()].reduce((sum, count) => sum + count, 0)).toBeGreaterThan(0);
    for (const line of result.out.split('\n').filter((text) => /^\S+\s+\d+\.\d+\.\d+\s+\d+/.test(text))) {
      const [ruleId, , fired] = line.trim().split(/\s+/);
      expect(Number(fired), ruleId).toBe(expected.get(ruleId) ?? 0);
    }
  });

  it('explains a rule for a patient read from the server', async () => {
    const ruleBySituation: Record<string, string> = {
      'hba1c-overdue': 'diabetes-hba1c-overdue',
      'ace-arb-monitoring-due': 'raas-inhibitor-monitoring',
      'colorectal-screening-due': 'colorectal-cancer-screening',
      'depression-screening-due': 'depression-screening',
    };
    const [patient, situation] =
      patients
        .map(
          (candidate) =>
            [
              candidate,
              Object.keys(ruleBySituation).find(
                (key) => (candidate.profile.situations as Record<string, boolean>)[key],
              ),
            ] as const,
        )
        .find(([, found]) => found !== undefined) ?? [];
    expect(patient && situation).toBeTruthy();
    const result = await runRulesCli([
      'explain',
      ruleBySituation[situation!],
      patient!.patientId,
      '--fhir',
      baseUrl,
      '--now',
      now.toISOString(),
    ]);
    expect(result.out).toContain('=> FIRED');
    expect(result.out).toContain(`patient ${patient!.patientId}`);
  });
});
