import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createRulesProgram } from '../../src/cli/rules.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleLoadError } from '../../src/rules/rule-set.ts';
import { createRulesRuntime, type RulesRuntime } from '../../src/rules/rules-runtime.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { copyOfStarterRules, minimalRule, ruleFolder, starterSource } from './helpers.ts';

/** Issue 13, items 9-11: mistakes caught before patients see them, and explain that tells the truth. */
async function refused(files: Record<string, string>): Promise<RuleLoadError[]> {
  const result = await loadRuleSet(ruleFolder(files));
  if (result.ok) throw new Error('the rule set was accepted');
  return result.errors;
}

async function run(args: string[], env: Record<string, string> = {}) {
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

const colonoscopyRule = `id: colonoscopy-due
version: 1.0.0
title: Colonoscopy due
trigger: [encounter-planned]
severity: info
guideline:
  label: Test guideline
  url: https://example.org/guideline
  recommendation: Screen.
define:
  colonoscopies: "%procedures.withCode('http://ehr-draft-agent.example/fhir/ValueSet/colonoscopy')"
condition:
  criteria:
    - id: adult
      description: Aged 45 or more
      fhirpath: "%patient.birthDate <= today() - 45 years"
values:
  last-colonoscopy: "%colonoscopies.latest().performed.ofType(dateTime)"
summary: "Screening due (last colonoscopy: {{last-colonoscopy|none recorded}})"
suggestedAction: Offer screening.
`;

describe('9: validate checks paths, fields and syntax, and says it plainly', () => {
  it('refuses a misspelt element in a criterion and in a value, naming the likely one', async () => {
    const [criterion] = await refused({
      'minimal.yaml': minimalRule.replace('%patient.birthDate', '%patient.birthdate'),
    });
    expect(criterion).toMatchObject({
      line: 14,
      message: 'criterion adult: Patient has no element birthdate (did you mean birthDate?)',
    });
    // The value reads through a define: its type (Procedure) is followed.
    const [value] = await refused({
      'colonoscopy.yaml': colonoscopyRule.replace('.performed.', '.performd.'),
    });
    expect(value).toMatchObject({
      line: 18,
      message: 'value last-colonoscopy: Procedure has no element performd (did you mean performed?)',
    });
    // The same rules spelt right load (the check refuses only what is wrong).
    expect((await loadRuleSet(ruleFolder({ 'colonoscopy.yaml': colonoscopyRule }))).ok).toBe(true);
    expect((await loadRuleSet(starterSource())).ok).toBe(true);
  });

  it('names an unknown field inside a criterion, and a criterion with neither fhirpath nor cql', async () => {
    const typo = await refused({ 'minimal.yaml': minimalRule.replace('      fhirpath:', '      fhirpth:') });
    expect(typo.map((error) => [error.line, error.message])).toContainEqual([
      14,
      'unknown field fhirpth in condition.criteria.0',
    ]);
    expect(typo.map((error) => error.message).join('\n')).not.toContain('Invalid input');
    const neither = await refused({
      'minimal.yaml': minimalRule.replace('      fhirpath: "%patient.birthDate <= today() - 18 years"\n', ''),
    });
    expect(neither[0].message).toBe('condition.criteria.0: a criterion needs either fhirpath or cql');
  });

  it('gives a syntax error its line and column, and never cuts the message mid-word', async () => {
    const [error] = await refused({
      'minimal.yaml': minimalRule.replace(
        '      fhirpath: "%patient.birthDate <= today() - 18 years"',
        '      fhirpath: >-\n        %observations.where(code =\n          )',
      ),
    });
    expect(error.line).toBe(16);
    expect(error.column).toBe(11);
    expect(error.message).toMatch(
      /^criterion adult: FHIRPath syntax error: mismatched input '\)' expecting one of .+ or \d+ more$/,
    );
  });

  it('does not add "library X is not in cql/" to a library that did not compile', async () => {
    const cqlModelDirectory = path.resolve('../shared/reference/cql');
    if (!existsSync(path.join(cqlModelDirectory, 'system-modelinfo.xml'))) return;
    const source = ruleFolder({
      'cql-rule.yaml': minimalRule.replace(
        '      fhirpath: "%patient.birthDate <= today() - 18 years"',
        '      cql:\n        library: Broken\n        expression: Adult',
      ),
      'cql/Broken.cql':
        'library Broken version \'1.0.0\'\nusing FHIR version \'4.0.1\'\ncontext Patient\ndefine "Adult": AgeInYears() >= "Nothing"\n',
    });
    const result = await loadRuleSet({ ...source, cqlModelDirectory });
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.errors.every((error) => path.basename(error.file) === 'Broken.cql')).toBe(true);
    expect(result.errors.map((error) => error.message).join('\n')).not.toContain('is not in cql/');
  });
});

describe('10: one rule version, one logic', () => {
  let runtime: RulesRuntime | undefined;
  afterEach(async () => {
    await runtime?.close();
    runtime = undefined;
  });

  it('refuses changed logic under a served version (start, reload, validate); a bumped version or a reworded title pass', async () => {
    const source = copyOfStarterRules();
    const storeFile = path.join(source.directory, 'rules.sqlite');
    const config = loadConfig({
      env: {
        EHR_AGENT_RULES__DIRECTORY: source.directory,
        EHR_AGENT_RULES__VALUE_SET_FILE: source.valueSetFile ?? '',
        EHR_AGENT_RULES__STORE_FILE: storeFile,
        EHR_AGENT_RULES__WATCH: 'false',
      },
    });
    runtime = await createRulesRuntime(config.rules, { logger: silentLogger() });
    await runtime.close();
    runtime = undefined;

    const file = path.join(source.directory, 'diabetes-statin.yaml');
    const original = readFileSync(file, 'utf8');
    // Wording is not logic.
    writeFileSync(
      file,
      original.replace('title: No statin for a patient', 'title: No statin yet for a patient'),
    );
    runtime = await createRulesRuntime(config.rules, { logger: silentLogger() });

    // Logic changed under 1.0.0 (40 to 75 becomes 40 to 80): a reload is refused, the last set serves on.
    const changed = original.replace('today() - 76 years', 'today() - 81 years');
    expect(changed).not.toBe(original);
    writeFileSync(file, changed);
    const reload = await runtime.holder.reload();
    expect(reload.ok).toBe(false);
    const versionLine = changed.split('\n').findIndex((line) => line.startsWith('version:')) + 1;
    if (!reload.ok)
      expect(reload.errors).toEqual([
        {
          file: expect.stringMatching(/diabetes-statin\.yaml$/),
          line: versionLine,
          message: expect.stringMatching(
            /^rule diabetes-statin version 1\.0\.0 has served other logic since .*: bump the version/,
          ),
        },
      ]);
    await runtime.close();
    runtime = undefined;

    // Start-up refuses it too, and `rules validate` says so against the service's store.
    await expect(createRulesRuntime(config.rules, { logger: silentLogger() })).rejects.toThrow(
      /diabetes-statin\.yaml:\d+: rule diabetes-statin version 1\.0\.0 has served other logic/,
    );
    const validated = await run(['validate'], {
      EHR_AGENT_RULES__DIRECTORY: source.directory,
      EHR_AGENT_RULES__VALUE_SET_FILE: source.valueSetFile ?? '',
      EHR_AGENT_RULES__STORE_FILE: storeFile,
    });
    expect(validated.exitCode).toBe(1);
    expect(validated.err).toContain('bump the version');

    writeFileSync(file, changed.replace('version: 1.0.0', 'version: 1.1.0'));
    runtime = await createRulesRuntime(config.rules, { logger: silentLogger() });
    expect(
      runtime.current().rules.find((rule) => rule.document.id === 'diabetes-statin')?.document.version,
    ).toBe('1.1.0');
  });
});

describe('11: explain tells the truth about the patient it explains', () => {
  const now = new Date('2026-03-01T10:00:00Z');
  const startOfDay = new Date('2026-03-01T00:00:00Z');
  const sandboxEnvironment = { EHR_AGENT_SANDBOX__SEED: '424242', EHR_AGENT_SANDBOX__PATIENTS: '12' };

  it("explains the running sandbox's own sbx-NNNN (its configured seed and day), and refuses ids it does not have", async () => {
    const loaded = await loadRuleSet(starterSource());
    if (!loaded.ok) throw new Error('starter rules do not load');
    const statuses = async (seed: number) => {
      const patients = generatePatients({ count: 12, seed, now: startOfDay });
      return Promise.all(
        patients.map(async (patient) => {
          const evaluation = await evaluateRules(loaded.ruleSet, recordFromResources(patient.resources), {
            trigger: 'encounter-planned',
            anyTrigger: true,
            now,
            perEncounterCap: Number.MAX_SAFE_INTEGER,
          });
          return new Map(evaluation.results.map((result) => [result.ruleId, result.status]));
        }),
      );
    };
    const configured = await statuses(424242);
    const otherSeed = await statuses(1);
    // A patient and rule where the configured sandbox and another seed disagree: the CLI must follow the configuration.
    const index = configured.findIndex((byRule, position) =>
      [...byRule].some(([ruleId, status]) => otherSeed[position].get(ruleId) !== status),
    );
    expect(index).toBeGreaterThanOrEqual(0);
    const ruleId = [...configured[index]].find(
      ([candidate, status]) => otherSeed[index].get(candidate) !== status,
    )?.[0] as string;
    const patientId = `sbx-${String(index).padStart(4, '0')}`;
    const explained = await run(
      ['explain', ruleId, patientId, '--now', now.toISOString()],
      sandboxEnvironment,
    );
    expect(explained.exitCode, explained.err).toBe(0);
    expect(explained.out).toContain(`=> ${String(configured[index].get(ruleId)).toUpperCase()}\n`);

    const unknown = await run(
      ['explain', ruleId, 'sbx-0012', '--now', now.toISOString()],
      sandboxEnvironment,
    );
    expect(unknown.exitCode).toBe(1);
    expect(unknown.err).toBe(
      'sbx-0012 is not a sandbox patient: the sandbox has 12 (sbx-0000 to sbx-0011)\n',
    );
  });

  it('shows the criterion that failed and the data it saw', async () => {
    const result = await run([
      'explain',
      'colorectal-cancer-screening',
      'crc-up-to-date',
      '--now',
      '2026-03-01',
    ]);
    expect(result.out).toContain('=> NOT-FIRED\n   because no-colonoscopy-10-years did not hold\n');
    expect(result.out).toMatch(
      /\[ \] no-colonoscopy-10-years: .*\n {6}result: false\n {6}saw: Procedure\/crc-up-to-date-colo \(Colonoscopy, \d{4}-\d{2}-\d{2}\)/,
    );
  });

  it('reads the rules folder from the service configuration (EHR_AGENT_RULES__DIRECTORY)', async () => {
    const source = copyOfStarterRules();
    const file = path.join(source.directory, 'depression-screening.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('severity: info', 'severity: loud'));
    const result = await run(['validate'], {
      EHR_AGENT_RULES__DIRECTORY: source.directory,
      EHR_AGENT_RULES__VALUE_SET_FILE: source.valueSetFile ?? '',
    });
    expect(result.exitCode).toBe(1);
    expect(result.err).toContain('depression-screening.yaml');
  });
});
