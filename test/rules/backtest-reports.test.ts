import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createRulesProgram } from '../../src/cli/rules.ts';
import { populationRecord } from '../../src/cli/sandbox-population.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { SqliteNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { copyOfStarterRules } from './helpers.ts';

/** Issue 13.14: backtests a team can act on: a row per patient and rule, suppression and cap, and --compare. */
async function run(args: string[], env: Record<string, string>) {
  let out = '';
  let err = '';
  process.exitCode = undefined;
  await createRulesProgram(
    { out: (text) => (out += text), err: (text) => (err += text), isTty: false },
    { config: () => loadConfig({ env }) },
  ).parseAsync(['node', 'rules', ...args]);
  const exitCode = process.exitCode ?? 0;
  process.exitCode = undefined;
  return { out, err, exitCode };
}

const now = new Date('2026-03-01T00:00:00Z');
const patients = 30;

function parseCsv(text: string): string[][] {
  const rows: string[][] = [];
  for (const line of text.trim().split('\n')) {
    const cells: string[] = [];
    let cell = '';
    let quoted = false;
    for (let index = 0; index < line.length; index++) {
      const character = line[index];
      if (quoted) {
        if (character === '"' && line[index + 1] === '"') {
          cell += '"';
          index++;
        } else if (character === '"') quoted = false;
        else cell += character;
      } else if (character === '"') quoted = true;
      else if (character === ',') {
        cells.push(cell);
        cell = '';
      } else cell += character;
    }
    cells.push(cell);
    rows.push(cells);
  }
  return rows;
}

describe('14: backtests a team can act on', () => {
  it('writes a row per patient and rule with the run, each criterion, evidence, and the effect of suppression and the cap', async () => {
    const source = copyOfStarterRules();
    const loaded = await loadRuleSet(source);
    if (!loaded.ok) throw new Error('starter rules do not load');
    const evaluate = (index: number) =>
      evaluateRules(loaded.ruleSet, populationRecord(index, now, 1), {
        trigger: 'encounter-planned',
        anyTrigger: true,
        now,
        perEncounterCap: Number.MAX_SAFE_INTEGER,
      });
    let screened = -1;
    for (let index = 0; index < patients && screened < 0; index++) {
      const colorectal = (await evaluate(index)).results.find(
        (ruleResult) => ruleResult.ruleId === 'colorectal-cancer-screening',
      );
      if (colorectal?.status === 'fired') screened = index;
    }
    expect(screened).toBeGreaterThanOrEqual(0);
    const screenedId = `sbx-${String(screened).padStart(4, '0')}`;
    const folder = mkdtempSync(path.join(tmpdir(), 'backtest-report-'));
    const storeFile = path.join(folder, 'rules.sqlite');
    // This patient was shown the colorectal nudge last week: suppression holds it back today.
    const store = new SqliteNudgeStore(storeFile);
    await store.recordDelivery({
      nudgeId: 'earlier',
      ruleId: 'colorectal-cancer-screening',
      ruleVersion: '1.0.0',
      patientId: screenedId,
      occasionId: 'an-earlier-visit',
      deliveredAt: new Date('2026-02-22T00:00:00Z'),
    });
    await store.close();
    const env = {
      EHR_AGENT_RULES__DIRECTORY: source.directory,
      EHR_AGENT_RULES__VALUE_SET_FILE: source.valueSetFile ?? '',
      EHR_AGENT_RULES__STORE_FILE: storeFile,
      EHR_AGENT_RULES__PER_ENCOUNTER_CAP: '1',
    };
    const csv = path.join(folder, 'patients.csv');
    const result = await run(
      [
        'backtest',
        '--source',
        'sandbox',
        '--seed',
        '1',
        '--patients',
        String(patients),
        '--now',
        now.toISOString(),
        '--workers',
        '1',
        '--csv',
        csv,
      ],
      env,
    );
    expect(result.exitCode, result.err).toBe(0);
    const [header, ...rows] = parseCsv(readFileSync(csv, 'utf8'));
    expect(header).toEqual([
      'run_at',
      'evaluated_at',
      'source',
      'patient_id',
      'rule_id',
      'rule_version',
      'mode',
      'status',
      'fired',
      'shown',
      'criteria',
      'evidence',
      'error',
    ]);
    expect(rows).toHaveLength(patients * 10);
    const column = (name: string) => header.indexOf(name);
    for (const row of rows) {
      expect(row[column('evaluated_at')]).toBe(now.toISOString());
      expect(row[column('source')]).toBe('sandbox (seed 1)');
      expect(Number.isNaN(Date.parse(row[column('run_at')]))).toBe(false);
    }

    // Each row agrees with evaluating that patient in memory: criteria, evidence, fired.
    const sample = rows.filter((row) => row[column('patient_id')] === screenedId);
    const evaluation = await evaluate(screened);
    for (const ruleResult of evaluation.results) {
      const row = sample.find((candidate) => candidate[column('rule_id')] === ruleResult.ruleId);
      expect(row?.[column('fired')], ruleResult.ruleId).toBe(String(ruleResult.status === 'fired'));
      expect(row?.[column('criteria')]).toBe(
        ruleResult.criteria
          .map((criterion) => `${criterion.id}=${criterion.skipped ? 'skipped' : criterion.holds}`)
          .join(';'),
      );
      expect(row?.[column('evidence')]).toBe(
        [...new Set(ruleResult.criteria.flatMap((criterion) => criterion.evidence))].join(' '),
      );
    }
    const colorectal = sample.find((row) => row[column('rule_id')] === 'colorectal-cancer-screening');
    expect(colorectal?.[column('fired')]).toBe('true');
    expect(colorectal?.[column('status')]).toBe('suppressed');
    expect(colorectal?.[column('shown')]).toBe('false');

    // With a cap of one per encounter, every patient with two or more firings has some capped.
    const firedPerPatient = new Map<string, number>();
    for (const row of rows)
      if (row[column('fired')] === 'true')
        firedPerPatient.set(
          row[column('patient_id')],
          (firedPerPatient.get(row[column('patient_id')]) ?? 0) + 1,
        );
    const shownPerPatient = new Map<string, number>();
    for (const row of rows)
      if (row[column('shown')] === 'true')
        shownPerPatient.set(
          row[column('patient_id')],
          (shownPerPatient.get(row[column('patient_id')]) ?? 0) + 1,
        );
    expect(Math.max(...shownPerPatient.values())).toBe(1);
    expect(rows.some((row) => row[column('status')] === 'capped')).toBe(true);
    expect(result.out).toMatch(/colorectal-cancer-screening\s+1\.0\.0\s+\d+\s+[\d.]+%\s+\d+\s+1\s+\d+\s+0/);
  });

  it('--compare lists exactly the patients whose result changes between two versions of the rules', async () => {
    const current = copyOfStarterRules();
    const previous = copyOfStarterRules();
    // The previous version screened from 50; the current one from 45.
    const file = path.join(previous.directory, 'colorectal-cancer-screening.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('today() - 45 years', 'today() - 50 years'));
    const env = {
      EHR_AGENT_RULES__DIRECTORY: current.directory,
      EHR_AGENT_RULES__VALUE_SET_FILE: current.valueSetFile ?? '',
      EHR_AGENT_RULES__STORE_FILE: path.join(mkdtempSync(path.join(tmpdir(), 'none-')), 'absent.sqlite'),
    };
    const result = await run(
      [
        'backtest',
        '--source',
        'sandbox',
        '--seed',
        '1',
        '--patients',
        '80',
        '--now',
        now.toISOString(),
        '--workers',
        '1',
        '--compare',
        previous.directory,
      ],
      env,
    );
    expect(result.exitCode, result.err).toBe(0);

    const [currentSet, previousSet] = await Promise.all([loadRuleSet(current), loadRuleSet(previous)]);
    if (!currentSet.ok || !previousSet.ok) throw new Error('rules do not load');
    const expected: string[] = [];
    for (let index = 0; index < 80; index++) {
      const record = populationRecord(index, now, 1);
      const fires = async (ruleSet: typeof currentSet.ruleSet) =>
        (
          await evaluateRules(ruleSet, record, {
            trigger: 'encounter-planned',
            anyTrigger: true,
            now,
            ruleIds: ['colorectal-cancer-screening'],
          })
        ).results[0].status === 'fired';
      if ((await fires(currentSet.ruleSet)) !== (await fires(previousSet.ruleSet)))
        expected.push(
          `  colorectal-cancer-screening  ${record.patient.id}  does-not-fire (1.0.0) -> fires (1.0.0)`,
        );
    }
    expect(expected.length).toBeGreaterThan(0);
    expect(result.out).toContain(
      `compared with ${previous.directory}: ${expected.length} patient results change (rule  patient  before -> now)\n${expected.join('\n')}\n`,
    );
  });
});

describe('backtest threads', () => {
  it('evaluates in the calling thread (one worker starts no thread), adds threads for more, and stops them when the set is refused', async () => {
    const { runBacktest } = await import('../../src/rules/backtest.ts');
    const { sandboxPopulationModule } = await import('../../src/cli/sandbox-population.ts');
    const source = copyOfStarterRules();
    const loaded = await loadRuleSet(source);
    if (!loaded.ok) throw new Error('starter rules do not load');
    const population = { kind: 'generated' as const, count: 60, seed: 1, module: sandboxPopulationModule };
    const one = await runBacktest({ source, population, now, workers: 1, ruleSet: loaded.ruleSet });
    expect(one.workerUtilization).toEqual([]);
    const two = await runBacktest({
      source,
      population,
      now,
      workers: 2,
      ruleSet: Promise.resolve(loaded.ruleSet),
    });
    expect(two.workerUtilization).toHaveLength(1);
    expect(two.patients).toBe(60);
    expect(two.rules.map((rule) => [rule.ruleId, rule.firedPatients])).toEqual(
      one.rules.map((rule) => [rule.ruleId, rule.firedPatients]),
    );
    await expect(
      runBacktest({ source, population, now, workers: 2, ruleSet: Promise.reject(new Error('refused')) }),
    ).rejects.toThrow('refused');
  });
});
