import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { createCqlCompiler } from '../../src/rules/cql-compiler.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { cqlModelDirectory, haveCqlModels } from '../support/cql-models.ts';
import { ruleFolder, starterRulesDirectory, valueSetBase } from './helpers.ts';

const haveModels = haveCqlModels;

const library = `library DiabetesStatin version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
valueset "Diabetes": '${valueSetBase}/diabetes'
context Patient
define "Diabetes Conditions": [Condition: "Diabetes"]
define "Aged 40 To 75": AgeInYears() between 40 and 75
`;

const cqlRule = `id: cql-diabetes-age
version: 1.0.0
title: Diabetes aged 40 to 75 (CQL)
trigger: [encounter-planned]
severity: info
guideline:
  label: Test guideline
  url: https://example.org/guideline
  recommendation: Consider a statin.
condition:
  criteria:
    - id: diabetes
      description: Diabetes (CQL retrieve through a value set)
      cql:
        library: DiabetesStatin
        expression: Diabetes Conditions
    - id: age
      description: Aged 40 to 75
      cql:
        library: DiabetesStatin
        expression: Aged 40 To 75
suggestedAction: Consider a statin.
`;

function fixture(name: string) {
  return recordFromBundle(
    JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', `${name}.json`), 'utf8')),
  );
}

async function firesFor(ruleSet: RuleSet, name: string) {
  const evaluation = await evaluateRules(ruleSet, fixture(name), {
    trigger: 'encounter-planned',
    now: new Date('2026-03-01'),
  });
  return evaluation.results[0];
}

describe.skipIf(!haveModels)('CQL rules', () => {
  it('compiles a library from CQL source and fires on its data, citing the resources the define returned', async () => {
    const source = ruleFolder({ 'cql-rule.yaml': cqlRule, 'cql/DiabetesStatin.cql': library });
    const result = await loadRuleSet({ ...source, cqlModelDirectory });
    if (!result.ok) throw new Error(JSON.stringify(result.errors));
    const fired = await firesFor(result.ruleSet, 'dm-no-statin');
    expect(fired.status).toBe('fired');
    expect(fired.nudge?.evidence).toEqual(['Condition/dm-no-statin-dm']);
    expect((await firesFor(result.ruleSet, 'crc-due')).status).toBe('not-fired');
  });

  it('runs the same library shipped as ELM JSON (and FHIRHelpers as a FHIR Library resource) with no CQL tool chain', async () => {
    const compiler = createCqlCompiler(cqlModelDirectory);
    const compiled = compiler.compile(library);
    expect(compiled.errors.filter((error) => error.severity === 'error')).toEqual([]);
    const helpers = compiled.libraries.get('FHIRHelpers');
    expect(helpers).toBeDefined();
    const source = ruleFolder({ 'cql-rule.yaml': cqlRule });
    const cqlDirectory = path.join(source.directory, 'cql');
    mkdirSync(cqlDirectory, { recursive: true });
    writeFileSync(
      path.join(cqlDirectory, 'DiabetesStatin.json'),
      JSON.stringify(compiled.libraries.get('DiabetesStatin')),
    );
    writeFileSync(
      path.join(cqlDirectory, 'FHIRHelpers.json'),
      JSON.stringify({
        resourceType: 'Library',
        id: 'FHIRHelpers',
        status: 'active',
        type: { coding: [{ code: 'logic-library' }] },
        content: [
          {
            contentType: 'application/elm+json',
            data: Buffer.from(JSON.stringify(helpers)).toString('base64'),
          },
        ],
      }),
    );
    const result = await loadRuleSet(source);
    if (!result.ok) throw new Error(JSON.stringify(result.errors));
    expect((await firesFor(result.ruleSet, 'dm-no-statin')).status).toBe('fired');
    expect((await firesFor(result.ruleSet, 'dm-on-statin')).status).toBe('fired');
    expect((await firesFor(result.ruleSet, 'opioid-benzo')).status).toBe('not-fired');
  });

  it('refuses CQL that does not compile, with the file and the line', async () => {
    const broken = library.replace(
      'AgeInYears() between 40 and 75',
      'AgeInYears() between 40 and 75 and "No Such Define"',
    );
    const result = await loadRuleSet({
      ...ruleFolder({ 'cql-rule.yaml': cqlRule, 'cql/DiabetesStatin.cql': broken }),
      cqlModelDirectory,
    });
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(path.basename(result.errors[0].file)).toBe('DiabetesStatin.cql');
    expect(result.errors[0].line).toBe(7);
    expect(result.errors[0].message).toMatch(/^CQL:/);
  });

  it('refuses CQL naming a value set the value-set file lacks, and CQL source with no model folder', async () => {
    const unknownSet = library.replace(`${valueSetBase}/diabetes`, `${valueSetBase}/no-such-set`);
    const result = await loadRuleSet({
      ...ruleFolder({ 'cql-rule.yaml': cqlRule, 'cql/DiabetesStatin.cql': unknownSet }),
      cqlModelDirectory,
    });
    expect(result.ok).toBe(false);
    if (!result.ok)
      expect(result.errors[0]).toMatchObject({
        line: 4,
        message: expect.stringContaining('unknown value set'),
      });

    const noModels = await loadRuleSet(
      ruleFolder({ 'cql-rule.yaml': cqlRule, 'cql/DiabetesStatin.cql': library }),
    );
    expect(noModels.ok).toBe(false);
    if (!noModels.ok) expect(noModels.errors[0].message).toContain('cqlModelDirectory');
  });

  it('the rules CLI prints only its own output when it compiles CQL (no kotlin-logging banner)', () => {
    const source = ruleFolder({ 'cql-rule.yaml': cqlRule, 'cql/DiabetesStatin.cql': library });
    const stdout = execFileSync(
      process.execPath,
      [
        'src/cli/rules.ts',
        '--rules',
        source.directory,
        '--value-sets',
        source.valueSetFile ?? '',
        '--cql-models',
        cqlModelDirectory,
        'validate',
      ],
      { encoding: 'utf8' },
    );
    expect(stdout).toMatch(/^ok: 1 rules, \d+ value sets, 2 CQL criteria \(fingerprint [0-9a-f]{16}\)\n$/);
  });

  it('refuses a rule naming a define the library does not have', async () => {
    const result = await loadRuleSet({
      ...ruleFolder({
        'cql-rule.yaml': cqlRule.replace('expression: Aged 40 To 75', 'expression: Aged 50 To 75'),
        'cql/DiabetesStatin.cql': library,
      }),
      cqlModelDirectory,
    });
    expect(result.ok).toBe(false);
    if (!result.ok)
      expect(result.errors[0]).toMatchObject({
        line: 21,
        message: expect.stringContaining('no define "Aged 50 To 75"'),
      });
  });
});
