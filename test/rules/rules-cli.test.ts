import { existsSync, mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createRulesProgram } from '../../src/cli/rules.ts';
import { populationRecord } from '../../src/cli/sandbox-population.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { SqliteNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { generatePatient } from '../../src/sandbox/synthetic-patients.ts';
import { copyOfStarterRules, starterSource } from './helpers.ts';

async function run(args: string[]) {
  let out = '';
  let err = '';
  const program = createRulesProgram({
    out: (text) => (out += text),
    err: (text) => (err += text),
    isTty: false,
  });
  process.exitCode = undefined;
  await program.parseAsync(['node', 'rules', ...args]);
  const exitCode = process.exitCode ?? 0;
  process.exitCode = undefined;
  return { out, err, exitCode };
}

afterEach(() => {
  process.exitCode = undefined;
});

describe('rules CLI', () => {
  it('validate: ok for the starter set; file:line errors and exit code 1 for a broken one', async () => {
    const ok = await run(['validate']);
    expect(ok.exitCode).toBe(0);
    expect(ok.out).toMatch(/^ok: 10 rules, \d+ value sets/);

    const source = copyOfStarterRules();
    const file = path.join(source.directory, 'opioid-benzodiazepine.yaml');
    writeFileSync(
      file,
      readFileSync(file, 'utf8').replace('severity: critical', 'severity: critical\nsevrity: high'),
    );
    const broken = await run([
      '--rules',
      source.directory,
      '--value-sets',
      source.valueSetFile ?? '',
      'validate',
    ]);
    expect(broken.exitCode).toBe(1);
    const line = readFileSync(file, 'utf8').split('\n').indexOf('sevrity: high') + 1;
    expect(broken.err).toContain(`opioid-benzodiazepine.yaml:${line}:1: unknown field sevrity`);
  });

  it('test: every starter rule passes its fixtures', async () => {
    const result = await run(['test']);
    expect(result.exitCode).toBe(0);
    expect(result.out).toMatch(/\n21 passed, 0 failed\n$/);
    expect(result.out).not.toContain('FAIL');
  });

  it('explain: shows each criterion, its result and the evidence', async () => {
    const result = await run([
      'explain',
      'raas-inhibitor-monitoring',
      'raas-unmonitored',
      '--now',
      '2026-03-01',
    ]);
    expect(result.out).toContain('=> FIRED');
    expect(result.out).toContain('[x] on-ace-inhibitor-or-arb');
    expect(result.out).toContain('evidence: MedicationRequest/raas-unmonitored-lisinopril');
    const notFired = await run([
      'explain',
      'raas-inhibitor-monitoring',
      'raas-monitored',
      '--now',
      '2026-03-01',
    ]);
    expect(notFired.out).toContain('=> NOT-FIRED');
    expect(notFired.out).toContain('[ ] missing-potassium-or-creatinine');
  });

  it('backtest: table and CSV over sandbox patients, spread over worker threads', async () => {
    const csv = path.join(mkdtempSync(path.join(tmpdir(), 'backtest-')), 'backtest.csv');
    const result = await run([
      'backtest',
      '--source',
      'sandbox',
      '--patients',
      '40',
      '--now',
      '2026-03-01',
      '--workers',
      '2',
      '--seed',
      '1',
      '--summary-csv',
      csv,
    ]);
    expect(result.exitCode).toBe(0);
    expect(result.out).toMatch(/40 patients in [\d.]+ s \(\d+ patients\/s, 2 workers\)/);
    expect(result.err).toContain('40/40');
    const rows = readFileSync(csv, 'utf8').trim().split('\n');
    expect(rows[0]).toBe(
      'rule_id,rule_version,title,patients,fired_patients,fired_percent,errors,first_error',
    );
    expect(rows).toHaveLength(11);

    // The worker counts must equal an in-process evaluation of the same patients.
    const loaded = await loadRuleSet(starterSource());
    if (!loaded.ok) throw new Error('starter rules do not load');
    const now = new Date('2026-03-01');
    const fired = new Map<string, number>();
    for (let index = 0; index < 40; index++) {
      const evaluation = await evaluateRules(loaded.ruleSet, populationRecord(index, now, 1), {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        perEncounterCap: Number.MAX_SAFE_INTEGER,
      });
      for (const rule of evaluation.results)
        if (rule.status === 'fired') fired.set(rule.ruleId, (fired.get(rule.ruleId) ?? 0) + 1);
    }
    for (const row of rows.slice(1)) {
      const [ruleId, , , patients, firedPatients] = row.split(',');
      expect(patients).toBe('40');
      expect(Number(firedPatients), ruleId).toBe(fired.get(ruleId) ?? 0);
    }
  });

  it('stats: per rule and version from the service store', async () => {
    const file = path.join(mkdtempSync(path.join(tmpdir(), 'stats-')), 'rules.sqlite');
    const store = new SqliteNudgeStore(file);
    await store.recordDelivery({
      nudgeId: 'n1',
      ruleId: 'diabetes-statin',
      ruleVersion: '1.0.0',
      patientId: 'p1',
      occasionId: 'e1',
      deliveredAt: new Date(),
    });
    await store.recordDelivery({
      nudgeId: 'n2',
      ruleId: 'diabetes-statin',
      ruleVersion: '1.0.0',
      patientId: 'p2',
      occasionId: 'e2',
      deliveredAt: new Date(),
    });
    await store.recordOutcome({
      nudgeId: 'n2',
      outcome: 'overridden',
      reason: 'Already done elsewhere',
      source: 'cds-hooks',
      recordedAt: new Date(),
    });
    await store.close();
    const table = await run(['stats', '--store', file]);
    expect(table.out).toMatch(/diabetes-statin\s+1\.0\.0\s+2\s+0 \(0%\)\s+1 \(50%\)\s+0\s+1/);
    expect(table.out).toContain('override: Already done elsewhere x1');
    const csv = await run(['stats', '--store', file, '--csv']);
    expect(csv.out.split('\n')[1]).toMatch(/^diabetes-statin,1\.0\.0,2,0,1,0,1,/);
    expect(existsSync(file)).toBe(true);
  });
});

describe('starter rules against the sandbox catalogue', () => {
  // The sandbox labels each synthetic patient with the rule situations that hold for it, written
  // independently of these rules. Where both read the guideline the same way they must agree.
  // Not compared (definitions differ on purpose): pneumococcal (ACIP 2024 counts only PCV, the
  // catalogue any pneumococcal vaccine), influenza (season from 1 August, not 365 days), blood
  // pressure (130/80 with a hypertension diagnosis, not 140/90 on the last two readings).
  const aligned: Record<string, string> = {
    'hba1c-overdue': 'diabetes-hba1c-overdue',
    'diabetes-statin-missing': 'diabetes-statin',
    'colorectal-screening-due': 'colorectal-cancer-screening',
    'opioid-benzodiazepine': 'opioid-benzodiazepine',
    'ace-arb-monitoring-due': 'raas-inhibitor-monitoring',
    'depression-screening-due': 'depression-screening',
  };

  it('agrees with the catalogue on 80 sandbox patients for the rules that read the guideline alike', async () => {
    const loaded = await loadRuleSet(starterSource());
    if (!loaded.ok) throw new Error('starter rules do not load');
    const now = new Date('2026-03-01T00:00:00Z');
    const disagreements: string[] = [];
    const firedCount = new Map<string, number>();
    for (let index = 0; index < 80; index++) {
      const patient = generatePatient(index, { count: 80, seed: 1, now, notesPerEncounter: 0 });
      const evaluation = await evaluateRules(loaded.ruleSet, populationRecord(index, now, 1), {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        perEncounterCap: Number.MAX_SAFE_INTEGER,
      });
      for (const [situation, ruleId] of Object.entries(aligned)) {
        const expected = (patient.profile.situations as Record<string, boolean>)[situation];
        const fired = evaluation.results.find((result) => result.ruleId === ruleId)?.status === 'fired';
        if (fired) firedCount.set(ruleId, (firedCount.get(ruleId) ?? 0) + 1);
        if (expected !== fired)
          disagreements.push(`${patient.patientId} ${ruleId}: catalogue ${expected}, rule ${fired}`);
      }
    }
    expect(disagreements).toEqual([]);
    // Every compared rule fires for some patients and not for others.
    for (const ruleId of Object.values(aligned)) {
      expect(firedCount.get(ruleId) ?? 0, ruleId).toBeGreaterThan(0);
      expect(firedCount.get(ruleId) ?? 0, ruleId).toBeLessThan(80);
    }
  });
});
