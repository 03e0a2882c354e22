import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { beforeAll, describe, expect, it } from 'vitest';
import { createCqlCompiler, type ElmLibrary } from '../../src/rules/cql-compiler.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { runRuleTests } from '../../src/rules/rule-tests.ts';
import { cqlModelDirectory, haveCqlModels } from '../support/cql-models.ts';
import { ruleFolder, runRulesCli } from './helpers.ts';

/**
 * Issue 13, items 5-8: published CQL as it is published. Published artifacts cannot be downloaded
 * here, so these libraries reproduce their shape: eCQM ELM with namespaced includes (CMS130's
 * `http://ecqi.healthit.gov/ecqms/FHIRHelpers` at version 4.1.000), a Measurement Period parameter,
 * Unfiltered-context defines, CDS Connect's valueset-db.json keyed by OID, and DSTU2/STU3 libraries.
 */
const haveModels = haveCqlModels;
const namespace = 'http://ecqi.healthit.gov/ecqms';
const colonoscopyOid = '2.16.840.1.113883.3.464.1003.108.12.1020';

const measure = `library ColorectalCancerScreeningsFHIR version '0.1.000'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
valueset "Colonoscopy": 'http://cts.nlm.nih.gov/fhir/ValueSet/${colonoscopyOid}'
parameter "Measurement Period" Interval<DateTime>
  default Interval[@2019-01-01T00:00:00.0, @2020-01-01T00:00:00.0)
context Unfiltered
define "Reporting Year": year from start of "Measurement Period"
context Patient
define "Qualifying Encounters":
  [Encounter] E where E.status = 'finished' and E.period during "Measurement Period"
define "Initial Population":
  AgeInYearsAt(date from end of "Measurement Period") between 46 and 75
    and exists "Qualifying Encounters"
define "Colonoscopy Performed": [Procedure: "Colonoscopy"] C where C.status = 'completed'
`;

/** How eCQM packages publish ELM: the translator's output placed in a namespace, includes by namespaced path. */
function published(elm: ElmLibrary, version?: string): ElmLibrary {
  const copy = structuredClone(elm);
  copy.library.identifier = {
    ...copy.library.identifier,
    system: namespace,
    ...(version ? { version } : {}),
  };
  for (const include of copy.library.includes?.def ?? []) {
    include.path = `${namespace}/${include.path}`;
    if (include.path.endsWith('/FHIRHelpers')) include.version = '4.1.000';
  }
  return copy;
}

const rule = (criterion: string, extra = '') => `id: crc-denominator
version: 1.0.0
title: Colorectal screening measure population
trigger: [encounter-planned]
severity: info
guideline:
  label: CMS130
  url: https://ecqi.healthit.gov/ecqm/ec/2022/cms130v10
  recommendation: Screen for colorectal cancer.
condition:
  criteria:
${criterion}
suggestedAction: Offer screening.
${extra}`;

const inPopulation = (parameters = '') => `    - id: initial-population
      description: In the measure's initial population
      cql:
        library: ColorectalCancerScreeningsFHIR
        expression: Initial Population
${parameters}`;

const subject = { reference: 'Patient/crc-2021' };
const patient2021: FhirResource[] = [
  { resourceType: 'Patient', id: 'crc-2021', birthDate: '1965-06-01', gender: 'female' },
  {
    resourceType: 'Encounter',
    id: 'crc-2021-visit',
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject,
    period: { start: '2021-04-10T09:00:00Z', end: '2021-04-10T09:30:00Z' },
  },
  {
    resourceType: 'Procedure',
    id: 'crc-2021-colonoscopy',
    status: 'completed',
    code: { coding: [{ system: 'http://snomed.info/sct', code: '73761001' }] },
    subject,
    performedDateTime: '2014-05-01',
  },
];
const fixtureBundle: Bundle = {
  resourceType: 'Bundle',
  type: 'collection',
  entry: patient2021.map((resource) => ({ resource })),
};

/** CDS Connect's valueset-db.json: cql-execution's code-service shape, keyed by bare OID. */
const valueSetDb = {
  [colonoscopyOid]: {
    '20210220': [
      { code: '73761001', system: 'http://snomed.info/sct', version: 'http://snomed.info/sct/731000124108' },
    ],
  },
};

let measureElm: ElmLibrary;
let helpersElm: ElmLibrary;
let dstu2Elm: ElmLibrary;
let stu3Elm: ElmLibrary;

beforeAll(() => {
  if (!haveModels) return;
  const compiler = createCqlCompiler(cqlModelDirectory);
  const compiled = compiler.compile(measure);
  expect(compiled.errors.filter((error) => error.severity === 'error')).toEqual([]);
  measureElm = published(compiled.libraries.get('ColorectalCancerScreeningsFHIR') as ElmLibrary);
  helpersElm = published(compiled.libraries.get('FHIRHelpers') as ElmLibrary, '4.1.000');
  // One translator holds one FHIR model version: each older edition gets its own.
  const older = (version: string, type: string) => {
    const result = createCqlCompiler(cqlModelDirectory).compile(
      `library OpioidRec11 version '1.0.0'\nusing FHIR version '${version}'\ncontext Patient\ndefine "Orders": [${type}]\n`,
    );
    expect(result.errors.filter((error) => error.severity === 'error')).toEqual([]);
    return result.libraries.get('OpioidRec11') as ElmLibrary;
  };
  dstu2Elm = older('1.0.2', 'MedicationOrder');
  stu3Elm = older('3.0.0', 'MedicationStatement');
}, 120_000);

/** A rules folder with the measure as published (ELM JSON, FHIRHelpers as a FHIR Library) and CDS Connect's value sets. */
function measureFolder(ruleText: string, extra: Record<string, string> = {}) {
  const source = ruleFolder({
    'crc.yaml': ruleText,
    'fixtures/crc-2021.json': JSON.stringify(fixtureBundle),
    'valueset-db.json': JSON.stringify(valueSetDb),
    ...extra,
  });
  const cql = path.join(source.directory, 'cql');
  mkdirSync(cql, { recursive: true });
  writeFileSync(path.join(cql, 'ColorectalCancerScreeningsFHIR.json'), JSON.stringify(measureElm));
  writeFileSync(
    path.join(cql, 'FHIRHelpers.json'),
    JSON.stringify({
      resourceType: 'Library',
      id: 'FHIRHelpers',
      url: `${namespace}/Library/FHIRHelpers`,
      version: '4.1.000',
      status: 'active',
      type: { coding: [{ code: 'logic-library' }] },
      content: [
        {
          contentType: 'application/elm+json',
          data: Buffer.from(JSON.stringify(helpersElm)).toString('base64'),
        },
      ],
    }),
  );
  return { ...source, valueSetFile: path.join(source.directory, 'valueset-db.json') };
}

const now = new Date('2026-03-01T00:00:00Z');

async function status(source: ReturnType<typeof measureFolder>, cqlParameters?: Record<string, unknown>) {
  const loaded = await loadRuleSet(source);
  if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
  const evaluation = await evaluateRules(loaded.ruleSet, recordFromResources(patient2021), {
    trigger: 'encounter-planned',
    now,
    ...(cqlParameters ? { cqlParameters } : {}),
  });
  return evaluation.results[0];
}

describe.skipIf(!haveModels)('published CQL as it is published', () => {
  it('5: resolves namespaced includes from the folder, and refuses one whose version the folder lacks', async () => {
    const result = await loadRuleSet(measureFolder(rule(inPopulation())));
    expect(result.ok, JSON.stringify(!result.ok && result.errors)).toBe(true);

    const source = measureFolder(rule(inPopulation()));
    writeFileSync(
      path.join(source.directory, 'cql', 'FHIRHelpers.json'),
      JSON.stringify(published(helpersElm, '4.0.1')),
    );
    const mismatch = await loadRuleSet(source);
    expect(mismatch.ok).toBe(false);
    if (!mismatch.ok)
      expect(mismatch.errors[0]).toMatchObject({
        line: 3,
        message: `CQL library ColorectalCancerScreeningsFHIR includes ${namespace}/FHIRHelpers version 4.1.000, but the folder has version 4.0.1`,
      });
  });

  it('6: Measurement Period from the rule; by default the calendar year of the evaluation date, not the library default', async () => {
    const with2021 = measureFolder(
      rule(inPopulation('        parameters:\n          Measurement Period: 2021\n')),
    );
    expect((await status(with2021)).status).toBe('fired');
    // 2026 (the evaluation date's year) has no visit; the library's own 2019 default would not either.
    expect((await status(measureFolder(rule(inPopulation())))).status).toBe('not-fired');
    // An explicit range, and a backtest-style override over the rule's value.
    const range = measureFolder(
      rule(
        inPopulation(
          '        parameters:\n          Measurement Period: { start: 2021-04-01, end: 2021-04-30 }\n',
        ),
      ),
    );
    expect((await status(range)).status).toBe('fired');
    expect((await status(range, { 'Measurement Period': '2022-01-01/2022-12-31' })).status).toBe('not-fired');
  });

  it('6: a test entry may give the period, and a wrong parameter is refused at its line', async () => {
    const source = measureFolder(
      rule(
        inPopulation(),
        `tests:
  - fixture: fixtures/crc-2021.json
    expect: fires
    now: 2026-03-01
    parameters:
      Measurement Period: 2021
  - fixture: fixtures/crc-2021.json
    expect: does-not-fire
    now: 2026-03-01
`,
      ),
    );
    const loaded = await loadRuleSet(source);
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const outcomes = await runRuleTests(loaded.ruleSet);
    expect(outcomes.map((outcome) => [outcome.expect, outcome.passed, outcome.message])).toEqual([
      ['fires', true, 'ok'],
      ['does-not-fire', true, 'ok'],
    ]);

    const wrong = await loadRuleSet(
      measureFolder(rule(inPopulation('        parameters:\n          Measurement Periods: 2021\n'))),
    );
    expect(wrong.ok).toBe(false);
    if (!wrong.ok)
      expect(wrong.errors[0]).toMatchObject({
        line: 18,
        message: expect.stringContaining(
          'library ColorectalCancerScreeningsFHIR has no parameter "Measurement Periods" (it has "Measurement Period")',
        ),
      });
    const badValue = await loadRuleSet(
      measureFolder(rule(inPopulation('        parameters:\n          Measurement Period: last year\n'))),
    );
    expect(badValue.ok).toBe(false);
    if (!badValue.ok)
      expect(badValue.errors[0].message).toContain('parameter "Measurement Period": an interval is');
  });

  it('6 and 8: an Unfiltered define as a criterion, with the period overridden per backtest and per explain', async () => {
    const source = measureFolder(
      rule(`    - id: reporting-2021
      description: Reporting on 2021
      cql:
        library: ColorectalCancerScreeningsFHIR
        expression: Reporting Year
`),
    );
    const loaded = await loadRuleSet(source);
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const record = recordFromResources(patient2021);
    const evaluated = await evaluateRules(loaded.ruleSet, record, {
      trigger: 'encounter-planned',
      now,
      explain: true,
    });
    // The Unfiltered define's value is there (2026: the evaluation date's year), not an empty result.
    expect(evaluated.results[0].criteria[0].result).toEqual([2026]);

    const common = ['--rules', source.directory, '--value-sets', source.valueSetFile];
    const backtest = await runRulesCli([
      ...common,
      'backtest',
      '--source',
      'generated',
      '--patients',
      '3',
      '--workers',
      '1',
      '--now',
      now.toISOString(),
      '--parameter',
      'Measurement Period=2021',
    ]);
    expect(backtest.exitCode, backtest.err).toBe(0);
    expect(backtest.out).toMatch(/crc-denominator\s+1\.0\.0\s+3\s+100\.0%/);

    const explained = await runRulesCli([
      ...common,
      'explain',
      'crc-denominator',
      path.join(source.directory, 'fixtures', 'crc-2021.json'),
      '--now',
      now.toISOString(),
      '--parameter',
      'Measurement Period=2021',
    ]);
    expect(explained.out).toContain('result: 2021');
    const unknown = await runRulesCli([
      ...common,
      'backtest',
      '--source',
      'generated',
      '--parameter',
      'Period=2021',
    ]);
    expect(unknown.exitCode).toBe(1);
    expect(unknown.err).toContain(
      '--parameter: parameter "Period" is not a parameter of CQL library ColorectalCancerScreeningsFHIR',
    );
  });

  it('7: reads CDS Connect valueset-db.json, one value set by OID, urn:oid and VSAC URL alike', async () => {
    // The library names the VSAC URL; the file is keyed by the bare OID; a FHIRPath rule names urn:oid.
    const source = measureFolder(
      rule(`    - id: colonoscopy
      description: Colonoscopy (CQL, VSAC URL)
      cql:
        library: ColorectalCancerScreeningsFHIR
        expression: Colonoscopy Performed
    - id: colonoscopy-fhirpath
      description: Colonoscopy (FHIRPath, urn:oid)
      fhirpath: "%procedures.where(code.coding.inValueSet('urn:oid:${colonoscopyOid}'))"
`),
    );
    const result = await status(source);
    expect(result.status).toBe('fired');
    expect(result.nudge?.evidence).toEqual(['Procedure/crc-2021-colonoscopy']);
  });

  it('8: refuses FHIR 1.0.2 and 3.0.0 libraries at the using line instead of running them against R4 data', async () => {
    for (const [version, elm] of [
      ['1.0.2', dstu2Elm],
      ['3.0.0', stu3Elm],
    ] as const) {
      const source = ruleFolder({
        'opioid.yaml': rule(`    - id: orders
      description: Opioid orders
      cql:
        library: OpioidRec11
        expression: Orders
`),
        'cql/OpioidRec11.json': JSON.stringify(elm),
      });
      const result = await loadRuleSet(source);
      expect(result.ok).toBe(false);
      if (result.ok) continue;
      expect(result.errors).toHaveLength(1);
      expect(result.errors[0]).toMatchObject({
        line: 2,
        message: `CQL library OpioidRec11 uses FHIR ${version}, but patient data here is FHIR R4 (4.0.1): use the R4 edition of the library`,
      });
      expect(path.basename(result.errors[0].file)).toBe('OpioidRec11.json');
    }
    // As CQL source beside R4 libraries: refused by name, not with the translator's model clash.
    const source = ruleFolder({
      'crc.yaml': rule(inPopulation()),
      'cql/Measure.cql': measure,
      'cql/OpioidRec11.cql':
        "library OpioidRec11 version '1.0.0'\nusing FHIR version '3.0.0'\ncontext Patient\n",
      'valueset-db.json': JSON.stringify(valueSetDb),
    });
    const result = await loadRuleSet({
      ...source,
      valueSetFile: path.join(source.directory, 'valueset-db.json'),
      cqlModelDirectory,
    });
    expect(result.ok).toBe(false);
    if (!result.ok)
      expect(result.errors.map((error) => [path.basename(error.file), error.line, error.message])).toEqual([
        [
          'OpioidRec11.cql',
          2,
          'CQL library uses FHIR 3.0.0, but patient data here is FHIR R4 (4.0.1): use the R4 edition of the library',
        ],
      ]);
  });
});
