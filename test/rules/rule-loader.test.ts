import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { formatLoadError, type RuleLoadError } from '../../src/rules/rule-set.ts';
import { minimalRule, ruleFolder, valueSetBase } from './helpers.ts';

async function refused(files: Record<string, string>): Promise<RuleLoadError[]> {
  const result = await loadRuleSet(ruleFolder(files));
  if (result.ok) throw new Error('the rule set was accepted');
  return result.errors;
}

describe('rule files that must be refused with file, line and reason', () => {
  it('accepts the minimal rule (the baseline the other cases break)', async () => {
    const result = await loadRuleSet(ruleFolder({ 'minimal.yaml': minimalRule }));
    expect(result.ok).toBe(true);
  });

  it('a YAML syntax error', async () => {
    const broken = minimalRule.replace('severity: info', 'severity: [info');
    const [error] = await refused({ 'minimal.yaml': broken });
    expect(path.basename(error.file)).toBe('minimal.yaml');
    expect(error.line).toBeGreaterThanOrEqual(5);
    expect(error.message).toMatch(/^YAML:/);
  });

  it('an unknown field, at the line of the field', async () => {
    const broken = minimalRule.replace('severity: info', 'severity: info\nseverty: warning');
    const errors = await refused({ 'minimal.yaml': broken });
    expect(errors).toHaveLength(1);
    expect(errors[0].line).toBe(6);
    expect(errors[0].message).toContain('unknown field severty');
    expect(formatLoadError(errors[0])).toMatch(/minimal\.yaml:6:\d+: unknown field severty/);
  });

  it('a wrong value, at the line of the value', async () => {
    const errors = await refused({ 'minimal.yaml': minimalRule.replace('severity: info', 'severity: loud') });
    expect(errors[0].line).toBe(5);
    expect(errors[0].message).toContain('severity');
  });

  it('a FHIRPath that does not parse, at the line inside a multi-line expression', async () => {
    const broken = minimalRule.replace(
      '      fhirpath: "%patient.birthDate <= today() - 18 years"',
      '      fhirpath: >-\n        %conditions.where(code.coding.exists()\n          and (clinicalStatus.coding.code = )',
    );
    const [error] = await refused({ 'minimal.yaml': broken });
    expect(error.message).toMatch(/criterion adult: FHIRPath syntax error/);
    expect(error.line).toBe(16);
  });

  it('a FHIRPath with an unknown function or variable', async () => {
    const unknownFunction = await refused({
      'minimal.yaml': minimalRule.replace('today() - 18 years', 'todayy() - 18 years'),
    });
    expect(unknownFunction[0].message).toMatch(/todayy/);
    expect(unknownFunction[0].line).toBe(14);
    const unknownVariable = await refused({
      'minimal.yaml': minimalRule.replace('%patient.birthDate', '%patinet.birthDate'),
    });
    expect(unknownVariable[0].message).toContain('unknown variable %patinet');
  });

  it('an unknown value set', async () => {
    const broken = minimalRule.replace(
      '"%patient.birthDate <= today() - 18 years"',
      `"%conditions.where(code.coding.inValueSet('${valueSetBase}/no-such-set'))"`,
    );
    const [error] = await refused({ 'minimal.yaml': broken });
    expect(error.message).toContain(`unknown value set ${valueSetBase}/no-such-set`);
    expect(error.line).toBe(14);
    const withCode = minimalRule.replace(
      '"%patient.birthDate <= today() - 18 years"',
      `"%observations.withCode('${valueSetBase}/hba1c').exists() and %conditions.withCode('${valueSetBase}/no-such-set').exists()"`,
    );
    const [withCodeError] = await refused({ 'minimal.yaml': withCode });
    expect(withCodeError.message).toContain(`unknown value set ${valueSetBase}/no-such-set`);
  });

  it('a template that names an undeclared value', async () => {
    const [error] = await refused({
      'minimal.yaml': minimalRule.replace(
        'suggestedAction: Do the thing.',
        'suggestedAction: Do {{the-thing}}.',
      ),
    });
    expect(error.message).toContain('{{the-thing}}');
    expect(error.line).toBe(15);
  });

  it('a fixture that does not exist, and a duplicate rule id', async () => {
    const withTest = `${minimalRule}tests:\n  - fixture: fixtures/missing.json\n    now: 2026-03-01\n    expect: fires\n`;
    const missing = await refused({ 'minimal.yaml': withTest });
    expect(missing[0]).toMatchObject({ line: 17, message: 'fixture fixtures/missing.json not found' });
    const duplicate = await refused({ 'a.yaml': minimalRule, 'b.yaml': minimalRule });
    expect(path.basename(duplicate[0].file)).toBe('b.yaml');
    expect(duplicate[0].message).toContain('already used by a.yaml');
  });

  it('reports every broken file in one pass, and never returns a half-loaded set', async () => {
    const result = await loadRuleSet(
      ruleFolder({
        'good.yaml': minimalRule.replace('id: minimal-rule', 'id: good-rule'),
        'bad-one.yaml': minimalRule
          .replace('id: minimal-rule', 'id: bad-one')
          .replace('severity: info', 'severity: loud'),
        'bad-two.yaml': minimalRule
          .replace('id: minimal-rule', 'id: bad-two')
          .replace('version: 1.0.0', 'version: one'),
      }),
    );
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.errors.map((error) => path.basename(error.file)).sort()).toEqual([
      'bad-one.yaml',
      'bad-two.yaml',
    ]);
    expect('ruleSet' in result).toBe(false);
  });

  it('a CQL criterion naming a library that is not there', async () => {
    const broken = minimalRule.replace(
      '      fhirpath: "%patient.birthDate <= today() - 18 years"',
      '      cql:\n        library: NoSuchLibrary\n        expression: Fires',
    );
    const [error] = await refused({ 'minimal.yaml': broken });
    expect(error.message).toContain('CQL library NoSuchLibrary');
    expect(error.line).toBe(15);
  });

  it('takes FHIR ValueSet resources (expansion or listed concepts) as the value-set file, and refuses filters', async () => {
    const source = ruleFolder({
      'minimal.yaml': minimalRule.replace(
        '"%patient.birthDate <= today() - 18 years"',
        `"%conditions.withCode('${valueSetBase}/diabetes')"`,
      ),
    });
    const local = JSON.parse(readFileSync(source.valueSetFile ?? '', 'utf8')) as {
      valueSets: { url: string; name: string; codes: { system: string; code: string }[] }[];
    };
    const bundle = {
      resourceType: 'Bundle',
      type: 'collection',
      entry: local.valueSets.map((valueSet, index) => ({
        resource:
          index % 2 === 0
            ? {
                resourceType: 'ValueSet',
                url: valueSet.url,
                name: valueSet.name,
                status: 'active',
                expansion: { contains: valueSet.codes },
              }
            : {
                resourceType: 'ValueSet',
                url: valueSet.url,
                status: 'active',
                compose: {
                  include: [...new Set(valueSet.codes.map((code) => code.system))].map((system) => ({
                    system,
                    concept: valueSet.codes
                      .filter((code) => code.system === system)
                      .map((code) => ({ code: code.code })),
                  })),
                },
              },
      })),
    };
    writeFileSync(source.valueSetFile ?? '', JSON.stringify(bundle));
    const accepted = await loadRuleSet(source);
    expect(accepted.ok).toBe(true);
    if (accepted.ok) {
      expect(
        accepted.ruleSet.valueSets.contains(`${valueSetBase}/diabetes`, 'http://snomed.info/sct', '44054006'),
      ).toBe(true);
      expect(accepted.ruleSet.valueSets.urls).toHaveLength(local.valueSets.length);
    }
    bundle.entry[0].resource = {
      resourceType: 'ValueSet',
      url: `${valueSetBase}/diabetes`,
      status: 'active',
      compose: {
        include: [
          {
            system: 'http://snomed.info/sct',
            filter: [{ property: 'concept', op: 'is-a', value: '73211009' }],
          },
        ],
      },
    } as never;
    writeFileSync(source.valueSetFile ?? '', JSON.stringify(bundle));
    const refusedFilter = await loadRuleSet(source);
    expect(refusedFilter.ok).toBe(false);
    if (!refusedFilter.ok) expect(refusedFilter.errors[0].message).toContain('ship its expansion');
  });
});
