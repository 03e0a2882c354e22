import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { cqlModelDirectory, haveCqlModels } from '../support/cql-models.ts';
import { ruleFolder, runRulesCli, starterRulesDirectory } from './helpers.ts';

/**
 * Issue 13.3 and 13.4: an evaluation error is a failure everywhere (rules test, explain, backtest),
 * never a quiet "does not fire", and it names the CQL library, the define, the line and the engine's
 * own message instead of "Encountered unexpected error during execution.".
 */
const haveModels = haveCqlModels;

const library = `library Denominator version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
context Patient
define "Adult": AgeInYears() >= 18
define "Only Visit": singleton from ({ 1, 2 })
define "In Denominator": "Adult" and "Only Visit" = 1
`;

const rule = `id: cms-denominator
version: 1.0.0
title: In the measure's denominator
trigger: [encounter-planned]
severity: info
guideline:
  label: Test measure
  url: https://example.org/measure
  recommendation: Screen.
condition:
  criteria:
    - id: denominator
      description: In the denominator
      cql:
        library: Denominator
        expression: In Denominator
suggestedAction: Screen.
tests:
  - fixture: fixtures/crc-up-to-date.json
    expect: does-not-fire
    now: 2026-03-01
`;

const detail =
  /CQL Denominator "Only Visit" at line 6:22: IllegalArgument: 'SingletonFrom' requires a 0 or 1 arg array/;

describe.skipIf(!haveModels)('evaluation errors are failures, with their detail', () => {
  const source = {
    ...ruleFolder({ 'measure.yaml': rule, 'cql/Denominator.cql': library }),
    cqlModelDirectory,
  };
  const common = [
    '--rules',
    source.directory,
    '--value-sets',
    source.valueSetFile ?? '',
    '--cql-models',
    cqlModelDirectory,
  ];

  it('keeps the library, define, line and engine message of a CQL error', async () => {
    const loaded = await loadRuleSet(source);
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const record = recordFromBundle(
      JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', 'crc-up-to-date.json'), 'utf8')),
    );
    const evaluation = await evaluateRules(loaded.ruleSet, record, {
      trigger: 'encounter-planned',
      now: new Date('2026-03-01'),
    });
    expect(evaluation.results[0].status).toBe('error');
    expect(evaluation.results[0].error).toMatch(detail);
    expect(evaluation.results[0].error).not.toContain('Encountered unexpected error');
  });

  it('rules test: an error fails a does-not-fire test and exits 1', async () => {
    const result = await runRulesCli([...common, 'test']);
    expect(result.out).toMatch(
      /FAIL {2}cms-denominator {2}fixtures\/crc-up-to-date\.json \(does-not-fire\) {2}evaluation failed: /,
    );
    expect(result.out).toMatch(detail);
    expect(result.out).not.toContain('PASS');
    expect(result.exitCode).toBe(1);
  });

  it('rules explain: prints the error and exits non-zero', async () => {
    const result = await runRulesCli([
      ...common,
      'explain',
      'cms-denominator',
      'crc-up-to-date',
      '--now',
      '2026-03-01',
    ]);
    expect(result.out).toContain('=> ERROR');
    expect(result.out).toMatch(detail);
    expect(result.exitCode).toBe(1);
  });

  it('rules backtest: the error text in the table and the CSV, and exit 1', async () => {
    const csv = path.join(mkdtempSync(path.join(tmpdir(), 'backtest-')), 'backtest.csv');
    const result = await runRulesCli([
      ...common,
      'backtest',
      '--source',
      'generated',
      '--patients',
      '3',
      '--workers',
      '1',
      '--now',
      '2026-03-01',
      '--csv',
      csv,
    ]);
    expect(result.exitCode).toBe(1);
    expect(result.out).toMatch(
      /cms-denominator\s+1\.0\.0\s+0\s+0\.0%\s+0\s+0\s+0\s+3\s+CQL Denominator "Only Visit"/,
    );
    // One row per patient, each with its error text.
    const rows = readFileSync(csv, 'utf8').trim().split('\n');
    expect(rows[0].split(',').at(-1)).toBe('error');
    expect(rows).toHaveLength(4);
    for (const row of rows.slice(1)) {
      expect(row).toContain(',error,false,false,');
      expect(row).toContain('"CQL Denominator ""Only Visit"" at line 6:22: IllegalArgument');
    }
  });
});
