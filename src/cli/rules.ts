import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import type { Bundle, Encounter, Patient } from 'fhir/r4.js';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { ServiceConfig } from '../config/config-schema.ts';
import { loadConfig } from '../config/load-config.ts';
import {
  type BacktestChange,
  type BacktestPopulation,
  type BacktestReport,
  backtestChanges,
  backtestCsv,
  backtestPatientCsv,
  runBacktest,
} from '../rules/backtest.ts';
import { evaluateRules, type RuleResult } from '../rules/evaluate.ts';
import type { NudgeStore, RuleStatistics } from '../rules/nudge-store.ts';
import { recordFromBundle } from '../rules/record-from-bundle.ts';
import { loadRuleSet, overrideProblems, type RuleSetSource } from '../rules/rule-loader.ts';
import { ruleLogicProblems } from '../rules/rule-logic.ts';
import { formatLoadError, type RuleSet } from '../rules/rule-set.ts';
import { runRuleTests } from '../rules/rule-tests.ts';
import { SqliteNudgeStore, SqlNudgeStore } from '../rules/sqlite-nudge-store.ts';
import { createServiceFhirClient } from '../service-fhir-client.ts';
import { storageAdapter } from '../storage/open-storage.ts';
import { PostgresDatabase } from '../storage/postgres-database.ts';
import { runProgram } from './run-program.ts';
import { patientIdFor, sandboxPatientRecord, sandboxPopulationModule } from './sandbox-population.ts';

/**
 * `rules`: the informatics team's tool. validate, test, backtest, explain and stats over the same
 * rules folder the service runs. Output is for people (tables) and for machines (exit codes, CSV).
 */
interface Io {
  out: (text: string) => void;
  err: (text: string) => void;
  isTty: boolean;
}

interface CommonOptions {
  rules?: string;
  valueSets?: string;
  cqlModels?: string;
}

const processIo: Io = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
  isTty: Boolean(process.stderr.isTTY),
};

/**
 * Defaults come from the service's own configuration (the YAML file and `EHR_AGENT_*` variables, read
 * as the service reads them), so the CLI checks, tests and explains the rules the service runs; flags
 * override them.
 */
export function createRulesProgram(
  io: Io = processIo,
  options: { config?: () => ServiceConfig } = {},
): Command {
  const readConfig = options.config ?? (() => loadConfig());
  let config: ServiceConfig | undefined;
  const serviceConfig = (): ServiceConfig => {
    config ??= readConfig();
    return config;
  };
  const program = new Command('rules')
    .description('Validate, test, backtest and explain guideline rules (FHIRPath and CQL)')
    .option('--rules <dir>', 'rules folder (default: rules.directory of the service configuration)')
    .option(
      '--value-sets <file>',
      'value-set file (default: rules.valueSetFile of the service configuration)',
    )
    .option(
      '--cql-models <dir>',
      'folder with CQL model info and FHIRHelpers, to compile CQL source (default: rules.cqlModelDirectory)',
    )
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  const source = (): RuleSetSource => {
    const flags = program.opts<CommonOptions>();
    const rules = serviceConfig().rules;
    return {
      directory: flags.rules ?? rules.directory,
      valueSetFile: flags.valueSets ?? rules.valueSetFile,
      cqlModelDirectory: flags.cqlModels ?? rules.cqlModelDirectory,
      defaultSuppressionDays: rules.suppression.defaultDays,
      perEncounterCap: rules.perEncounterCap,
    };
  };
  /** The service's store of deliveries, outcomes and served rule logic. */
  const storeFile = () => {
    const current = serviceConfig();
    return current.rules.storeFile ?? path.join(current.dataDir, 'rules.sqlite');
  };
  /** Another rules folder (`--compare`), with its own value sets when it has them. */
  const compareSource = (directory: string): RuleSetSource => {
    const own = path.join(directory, 'valuesets.json');
    return { ...source(), directory, valueSetFile: existsSync(own) ? own : source().valueSetFile };
  };
  const loadSource = async (rules: RuleSetSource): Promise<RuleSet | undefined> => {
    const result = await loadRuleSet(rules);
    if (result.ok) return result.ruleSet;
    for (const error of result.errors) io.err(`${formatLoadError(error)}\n`);
    io.err(`rule set refused: ${result.errors.length} error(s)\n`);
    process.exitCode = 1;
    return undefined;
  };
  const load = async (): Promise<RuleSet | undefined> => {
    const result = await loadRuleSet(source());
    if (result.ok) return result.ruleSet;
    for (const error of result.errors) io.err(`${formatLoadError(error)}\n`);
    io.err(`rule set refused: ${result.errors.length} error(s)\n`);
    process.exitCode = 1;
    return undefined;
  };

  program
    .command('validate')
    .description('check every rule file: schema, FHIRPath, CQL, value sets, fixtures (errors as file:line)')
    .action(async () => {
      const ruleSet = await load();
      if (!ruleSet) return;
      // The service would refuse a set that changes a served version's logic: say so before it does.
      if (existsSync(storeFile())) {
        const store = new SqliteNudgeStore(storeFile());
        try {
          const problems = await ruleLogicProblems(store, ruleSet);
          for (const problem of problems) io.err(`${formatLoadError(problem)}\n`);
          if (problems.length > 0) {
            io.err(`rule set would be refused by the service: ${problems.length} error(s)\n`);
            process.exitCode = 1;
            return;
          }
        } finally {
          await store.close();
        }
      }
      const cqlCriteria = ruleSet.rules
        .flatMap((rule) => rule.criteria)
        .filter((criterion) => criterion.kind === 'cql');
      io.out(
        `ok: ${ruleSet.rules.length} rules, ${ruleSet.valueSets.urls.length} value sets, ${cqlCriteria.length} CQL criteria (fingerprint ${ruleSet.fingerprint})\n`,
      );
    });

  program
    .command('test')
    .description('run each rule against its own fixtures')
    .argument('[rule-ids...]', 'only these rules')
    .action(async (ruleIds: string[]) => {
      const ruleSet = await load();
      if (!ruleSet) return;
      const outcomes = await runRuleTests(ruleSet, ruleIds.length > 0 ? ruleIds : undefined);
      for (const outcome of outcomes) {
        io.out(
          `${outcome.passed ? 'PASS' : 'FAIL'}  ${outcome.ruleId}  ${outcome.fixture} (${outcome.expect})${outcome.passed ? '' : `  ${outcome.message}`}\n`,
        );
      }
      const failed = outcomes.filter((outcome) => !outcome.passed).length;
      const untested = ruleSet.rules
        .filter((rule) => rule.document.tests.length === 0)
        .map((rule) => rule.document.id);
      if (untested.length > 0) io.out(`rules without fixtures: ${untested.join(', ')}\n`);
      io.out(`${outcomes.length - failed} passed, ${failed} failed\n`);
      if (failed > 0 || outcomes.length === 0) process.exitCode = 1;
    });

  program
    .command('backtest')
    .description(
      'evaluate every rule across a population: how many patients each rule fires for, and is shown to',
    )
    .requiredOption('--source <source>', "'sandbox' (synthetic patients), 'generated', or a FHIR base URL")
    .addOption(new Option('--patients <n>', 'number of patients').argParser(positiveInteger).default(100))
    .option(
      '--csv <file>',
      'write one row per patient and rule: fired, shown, each criterion, evidence, error (with the run date and source)',
    )
    .option('--summary-csv <file>', 'write the per-rule table as CSV')
    .option(
      '--compare <rules-folder>',
      'also run another rules folder and list the patients whose result changes',
    )
    .option(
      '--store <file>',
      "the service's store, read to apply suppression as it stands (default: the service's, when it exists)",
    )
    .addOption(new Option('--now <date>', 'evaluation date (default: now)').argParser(isoDate))
    .addOption(
      new Option(
        '--workers <n>',
        'evaluating threads, this one included (default: one, plus one per 3,000 patients up to one per core)',
      ).argParser(positiveInteger),
    )
    .addOption(
      new Option(
        '--seed <n>',
        'population seed (sandbox, generated; default: sandbox.seed of the service configuration)',
      ).argParser(positiveInteger),
    )
    .option('--token <token>', 'bearer token for a FHIR source')
    .addOption(parameterOption())
    .action(
      async (options: {
        source: string;
        patients: number;
        csv?: string;
        summaryCsv?: string;
        compare?: string;
        store?: string;
        now?: Date;
        workers?: number;
        seed?: number;
        token?: string;
        parameter: Record<string, unknown>;
      }) => {
        const now = options.now ?? new Date();
        const seed = options.seed ?? serviceConfig().sandbox.seed;
        const store = options.store ?? storeFile();
        if (options.store && !existsSync(options.store)) {
          io.err(`no store at ${options.store}\n`);
          process.exitCode = 1;
          return;
        }
        const comparison = options.compare ? compareSource(options.compare) : undefined;
        const backtest = (rules: RuleSetSource, ruleSet: Promise<RuleSet>, label: string) =>
          runBacktest({
            source: rules,
            population: populationFor(
              { ...options, seed },
              now,
              async () => (await ruleSet).additionalResourceTypes,
              fhirClient,
            ),
            // Validated and compiled here while the worker threads start.
            ruleSet,
            now,
            workers: options.workers,
            onProgress: progressBar(io, label),
            cqlParameters: options.parameter,
            collectRows: Boolean(options.csv || options.compare),
            ...(existsSync(store) ? { storeFile: store } : {}),
          }).catch((error: unknown) => {
            if (error instanceof BacktestRefused) return undefined;
            throw error;
          });
        const checked = (loading: Promise<RuleSet | undefined>) =>
          loading.then((ruleSet) => {
            if (!ruleSet || !parametersFit(ruleSet, options.parameter)) throw new BacktestRefused();
            return ruleSet;
          });
        const report = await backtest(source(), checked(load()), '');
        if (!report) return;
        io.err('\n');
        io.out(backtestTable(report));
        io.out(
          `${report.patients} patients in ${(report.durationMs / 1000).toFixed(1)} s (${report.patientsPerSecond.toFixed(0)} patients/s, ${report.workers} workers)${existsSync(store) ? `; suppression as recorded in ${store}` : '; no store: suppression not applied'}\n`,
        );
        if (options.csv) {
          const sourceLabel = /^https?:/.test(options.source)
            ? options.source
            : `${options.source} (seed ${seed})`;
          await writeFile(
            options.csv,
            backtestPatientCsv(report, { runAt: new Date(), evaluatedAt: now, source: sourceLabel }),
          );
          io.out(`CSV written to ${options.csv}\n`);
        }
        if (options.summaryCsv) {
          await writeFile(options.summaryCsv, backtestCsv(report));
          io.out(`summary CSV written to ${options.summaryCsv}\n`);
        }
        if (comparison && options.compare) {
          const before = await backtest(comparison, checked(loadSource(comparison)), 'compare ');
          if (!before) return;
          io.err('\n');
          io.out(comparisonText(backtestChanges(before, report), options.compare));
        }
        if (report.rules.some((rule) => rule.errors > 0)) process.exitCode = 1;
      },
    );

  program
    .command('explain')
    .description('show which data made a rule fire or not for one patient')
    .argument('<rule>', 'rule id')
    .argument(
      '<patient>',
      'a Bundle JSON file, a fixture name, a sandbox patient id (sbx-0003), or a patient id on --fhir',
    )
    .option('--fhir <base>', 'read the patient from this FHIR server')
    .option('--token <token>', 'bearer token for --fhir')
    .addOption(new Option('--now <date>', 'evaluation date (default: now)').argParser(isoDate))
    .addOption(
      new Option('--seed <n>', 'sandbox seed (default: sandbox.seed of the service configuration)').argParser(
        positiveInteger,
      ),
    )
    .addOption(parameterOption())
    .action(
      async (
        ruleId: string,
        patient: string,
        options: {
          fhir?: string;
          token?: string;
          now?: Date;
          seed?: number;
          parameter: Record<string, unknown>;
        },
      ) => {
        const ruleSet = await load();
        if (!ruleSet || !parametersFit(ruleSet, options.parameter)) return;
        const rule = ruleSet.rules.find((candidate) => candidate.document.id === ruleId);
        if (!rule) {
          io.err(
            `no rule ${ruleId} (rules: ${ruleSet.rules.map((candidate) => candidate.document.id).join(', ')})\n`,
          );
          process.exitCode = 1;
          return;
        }
        const now = options.now ?? new Date();
        let record: PatientRecord;
        try {
          record = await explainRecord(
            patient,
            ruleSet,
            {
              ...options,
              sandbox: { ...serviceConfig().sandbox, ...(options.seed ? { seed: options.seed } : {}) },
            },
            now,
            fhirClient,
          );
        } catch (error) {
          io.err(`${error instanceof Error ? error.message : String(error)}\n`);
          process.exitCode = 1;
          return;
        }
        const evaluation = await evaluateRules(ruleSet, record, {
          trigger: rule.document.trigger[0],
          anyTrigger: true,
          now,
          ruleIds: [ruleId],
          explain: true,
          cqlParameters: options.parameter,
          perEncounterCap: Number.MAX_SAFE_INTEGER,
        });
        io.out(explanation(evaluation.results[0], rule.document, record, now));
        // A rule that could not be evaluated explains nothing: scripts and CI must see the failure.
        if (evaluation.results[0]?.status === 'error') process.exitCode = 1;
      },
    );

  program
    .command('stats')
    .description('per rule and version: fired, accepted, overridden (with reasons), ignored')
    .option(
      '--store <file>',
      'the service SQLite store of nudge outcomes (default: the shared PostgreSQL with DATABASE_URL, else rules.storeFile, or rules.sqlite in dataDir)',
    )
    .option('--csv', 'print CSV instead of a table')
    .action(async (options: { store?: string; csv?: boolean }) => {
      // With the shared PostgreSQL storage every replica records there: read the statistics from it.
      const current = serviceConfig();
      if (!options.store && storageAdapter(current) === 'postgres' && current.queue.postgresUrl) {
        const database = await PostgresDatabase.open({
          connectionString: current.queue.postgresUrl,
          schema: current.storage.schema,
          maxConnections: 1,
        });
        try {
          io.out(formatStatistics(await new SqlNudgeStore(database).statistics(), options.csv ?? false));
        } finally {
          await database.close();
        }
        return;
      }
      const file = options.store ?? storeFile();
      if (!existsSync(file)) {
        io.err(`no store at ${file}\n`);
        process.exitCode = 1;
        return;
      }
      const store: NudgeStore = new SqliteNudgeStore(file);
      try {
        io.out(formatStatistics(await store.statistics(), options.csv ?? false));
      } finally {
        await store.close();
      }
    });

  /**
   * A client for a FHIR source: with --token, that bearer; on the service's own FHIR server, the
   * service's authenticated client (SMART Backend Services or its static token); elsewhere, no token.
   */
  const fhirClient = async (baseUrl: string, token: string | undefined): Promise<FhirClient> => {
    if (token)
      return new FhirClient({ baseUrl, accessToken: { getToken: async () => token, invalidate: () => {} } });
    const current = serviceConfig();
    const sameServer = (url: string | undefined) => url?.replace(/\/+$/, '') === baseUrl.replace(/\/+$/, '');
    if (sameServer(current.fhir.baseUrl))
      return (await createServiceFhirClient(current, { fhirBaseUrl: baseUrl.replace(/\/+$/, '') })).fhir;
    return new FhirClient({ baseUrl });
  };

  /** Parameter values given on the command line must belong to some CQL library of the set and fit its type. */
  const parametersFit = (ruleSet: RuleSet, values: Record<string, unknown>): boolean => {
    const problems = overrideProblems(
      values,
      ruleSet.rules.flatMap((rule) => rule.criteria),
      ruleSet.cql,
    );
    for (const problem of problems) io.err(`--parameter: ${problem}\n`);
    if (problems.length > 0) process.exitCode = 1;
    return problems.length === 0;
  };

  return program;
}

/** `--parameter "Measurement Period=2021"`, repeatable; a JSON value (number, true) is read as JSON. */
function parameterOption(): Option {
  return new Option(
    '--parameter <name=value>',
    'CQL parameter value over the rules\' own, e.g. "Measurement Period=2021" (repeatable)',
  )
    .argParser((text: string, previous: Record<string, unknown>) => {
      const separator = text.indexOf('=');
      if (separator < 1) throw new InvalidArgumentError('name=value, like "Measurement Period=2021"');
      const raw = text.slice(separator + 1);
      let value: unknown = raw;
      if (/^(true|false|-?\d+(\.\d+)?)$/.test(raw) && !/^\d{4}$/.test(raw)) value = JSON.parse(raw);
      return { ...previous, [text.slice(0, separator).trim()]: value };
    })
    .default({});
}

type FhirClientFor = (baseUrl: string, token: string | undefined) => Promise<FhirClient>;

/** The rule set could not be used (its errors are printed): the backtest stops without a report. */
class BacktestRefused extends Error {}

function populationFor(
  options: { source: string; patients: number; seed: number; token?: string },
  now: Date,
  additionalTypes: () => Promise<readonly string[]>,
  fhirClient: FhirClientFor,
): BacktestPopulation {
  if (options.source === 'sandbox') {
    return {
      kind: 'generated',
      count: options.patients,
      seed: options.seed,
      module: sandboxPopulationModule,
    };
  }
  if (options.source === 'generated')
    return { kind: 'generated', count: options.patients, seed: options.seed };
  if (!/^https?:\/\//.test(options.source))
    throw new InvalidArgumentError(`--source must be sandbox, generated or a FHIR base URL`);
  return {
    kind: 'records',
    count: options.patients,
    batches: fhirPopulation(
      options.source,
      options.patients,
      options.token,
      now,
      additionalTypes,
      fhirClient,
    ),
  };
}

/** Patients from a FHIR server, read with the service's own history retrieval (compartment guard included). */
async function* fhirPopulation(
  baseUrl: string,
  count: number,
  token: string | undefined,
  now: Date,
  typesToLoad: () => Promise<readonly string[]>,
  fhirClient: FhirClientFor,
): AsyncIterable<PatientRecord[]> {
  const additionalTypes = await typesToLoad();
  const client = await fhirClient(baseUrl, token);
  const patients = (
    await client.search<Patient>('Patient', { _count: Math.min(count, 200), _elements: 'id' })
  ).slice(0, count);
  for (let start = 0; start < patients.length; start += 10) {
    const batch = patients.slice(start, start + 10);
    yield Promise.all(batch.map((patient) => fhirRecord(client, patient.id ?? '', now, additionalTypes)));
  }
}

/** The patient's history as the service reads it, with every further type the rules' CQL reads. */
async function fhirRecord(
  client: FhirClient,
  patientId: string,
  now: Date,
  additionalTypes: readonly string[],
): Promise<PatientRecord> {
  // The history reader is keyed on an encounter; a backtest has none, so it stands on a planned one.
  const encounter: Encounter = {
    resourceType: 'Encounter',
    id: `backtest-${patientId}`,
    status: 'planned',
    class: { code: 'AMB' },
    subject: { reference: `Patient/${patientId}` },
    period: { start: now.toISOString() },
  };
  return retrievePatientRecord(client, encounter, {
    draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
    additionalTypes,
  });
}

async function explainRecord(
  patient: string,
  ruleSet: RuleSet,
  options: { fhir?: string; token?: string; sandbox: { patients: number; seed: number } },
  now: Date,
  fhirClient: FhirClientFor,
): Promise<PatientRecord> {
  if (options.fhir)
    return fhirRecord(
      await fhirClient(options.fhir, options.token),
      patient,
      now,
      ruleSet.additionalResourceTypes,
    );
  if (/^sbx-\d+$/.test(patient)) {
    // The running sandbox's patient, as it generated it (its seed, the start of today's UTC day).
    const record = sandboxPatientRecord(patient, options.sandbox, now);
    if (!record) {
      const last = patientIdFor(options.sandbox.patients - 1);
      throw new InvalidArgumentError(
        `${patient} is not a sandbox patient: the sandbox has ${options.sandbox.patients} (sbx-0000 to ${last})`,
      );
    }
    return record;
  }
  const candidates = [
    patient,
    path.join(ruleSet.directory, 'fixtures', patient),
    path.join(ruleSet.directory, 'fixtures', `${patient}.json`),
  ];
  const file = candidates.find((candidate) => existsSync(candidate) && candidate.endsWith('.json'));
  if (!file)
    throw new InvalidArgumentError(
      `patient ${patient}: not a file, fixture, sandbox id, and no --fhir given`,
    );
  return recordFromBundle(JSON.parse(await readFile(file, 'utf8')) as Bundle);
}

export function explanation(
  result: RuleResult | undefined,
  rule: RuleSet['rules'][number]['document'],
  record: PatientRecord,
  now: Date,
): string {
  if (!result) return `rule ${rule.id} was not evaluated\n`;
  const lines = [
    `${rule.id} ${rule.version}: ${rule.title}`,
    `patient ${record.patient.id}, evaluated at ${now.toISOString()}, match ${rule.condition.match}`,
    `=> ${result.status.toUpperCase()}${result.error ? ` (${result.error})` : ''}`,
  ];
  const failing = result.criteria.filter((criterion) => !criterion.holds && !criterion.skipped);
  if (result.status === 'not-fired' && failing.length > 0)
    lines.push(
      rule.condition.match === 'all'
        ? `   because ${failing.map((criterion) => criterion.id).join(', ')} did not hold`
        : '   because no criterion held',
    );
  lines.push('');
  for (const criterion of result.criteria) {
    lines.push(`  [${criterion.holds ? 'x' : ' '}] ${criterion.id}: ${criterion.description}`);
    const shown =
      criterion.result.length === 0
        ? '(empty)'
        : criterion.result.map((value) => JSON.stringify(value)).join(', ');
    lines.push(`      result: ${shown}`);
    if (criterion.evidence.length > 0) lines.push(`      evidence: ${criterion.evidence.join(', ')}`);
    if (criterion.seen) lines.push(`      saw: ${criterion.seen.join(', ')}`);
  }
  if (result.nudge) {
    lines.push('', `summary: ${result.nudge.summary}`, `suggested action: ${result.nudge.suggestedAction}`);
    if (result.nudge.urgency)
      lines.push(`visit urgency: ${result.nudge.urgency.level} (${result.nudge.urgency.reason})`);
  }
  return `${lines.join('\n')}\n`;
}

export function formatStatistics(statistics: RuleStatistics[], csv: boolean): string {
  if (csv) {
    const rows = statistics.map((row) =>
      [
        row.ruleId,
        row.ruleVersion,
        row.fired,
        row.accepted,
        row.overridden,
        row.ignored,
        row.noResponse,
        JSON.stringify(JSON.stringify(row.overrideReasons)),
        row.silent,
      ].join(','),
    );
    return `${['rule_id,rule_version,fired,accepted,overridden,ignored,no_response,override_reasons,silent_fired', ...rows].join('\n')}\n`;
  }
  if (statistics.length === 0) return 'no nudges recorded yet\n';
  const width = Math.max(...statistics.map((row) => row.ruleId.length), 4);
  const lines = [
    `${'rule'.padEnd(width)}  version  fired  accepted  overridden  ignored  no response  silent`,
  ];
  for (const row of statistics) {
    const percent = (count: number) =>
      row.fired === 0 ? '' : ` (${Math.round((100 * count) / row.fired)}%)`;
    lines.push(
      `${row.ruleId.padEnd(width)}  ${row.ruleVersion.padEnd(7)}  ${String(row.fired).padStart(5)}  ${`${row.accepted}${percent(row.accepted)}`.padStart(8)}  ${`${row.overridden}${percent(row.overridden)}`.padStart(10)}  ${String(row.ignored).padStart(7)}  ${String(row.noResponse).padStart(11)}  ${String(row.silent).padStart(6)}`,
    );
    for (const [reason, count] of Object.entries(row.overrideReasons).sort(
      (left, right) => right[1] - left[1],
    )) {
      lines.push(`${' '.repeat(width + 2)}override: ${reason} x${count}`);
    }
  }
  return `${lines.join('\n')}\n`;
}

function backtestTable(report: BacktestReport): string {
  const width = Math.max(...report.rules.map((rule) => rule.ruleId.length), 'rule'.length);
  const lines = [
    `${'rule'.padEnd(width)}  version  fired  percent  shown  suppressed  capped  errors  first error`,
  ];
  for (const rule of report.rules) {
    const percent = report.patients === 0 ? 0 : (100 * rule.firedPatients) / report.patients;
    lines.push(
      `${rule.ruleId.padEnd(width)}  ${rule.ruleVersion.padEnd(7)}  ${String(rule.firedPatients).padStart(5)}  ${percent.toFixed(1).padStart(6)}%  ${String(rule.shownPatients).padStart(5)}  ${String(rule.suppressedPatients).padStart(10)}  ${String(rule.cappedPatients).padStart(6)}  ${String(rule.errors).padStart(6)}${rule.firstError ? `  ${rule.firstError}` : ''}`,
    );
  }
  return `${lines.join('\n')}\n`;
}

function comparisonText(changes: BacktestChange[], otherFolder: string): string {
  if (changes.length === 0) return `compared with ${otherFolder}: no patient's result changes\n`;
  const describe = (side: BacktestChange['before']) => (side ? `${side.status} (${side.version})` : 'absent');
  const lines = [
    `compared with ${otherFolder}: ${changes.length} patient results change (rule  patient  before -> now)`,
  ];
  for (const change of changes)
    lines.push(
      `  ${change.ruleId}  ${change.patientId}  ${describe(change.before)} -> ${describe(change.after)}`,
    );
  return `${lines.join('\n')}\n`;
}

function progressBar(io: Io, label = ''): (done: number, total: number) => void {
  const started = Date.now();
  let lastShown = -1;
  return (done, total) => {
    const width = 30;
    const filled = Math.round((done / Math.max(total, 1)) * width);
    const rate = done / Math.max((Date.now() - started) / 1000, 0.001);
    const line = `${label}[${'#'.repeat(filled)}${'.'.repeat(width - filled)}] ${done}/${total} ${rate.toFixed(0)} patients/s`;
    if (io.isTty) {
      io.err(`\r${line}`);
    } else {
      // Without a terminal, print at each tenth so logs stay short.
      const tenth = Math.floor((10 * done) / Math.max(total, 1));
      if (tenth !== lastShown) {
        lastShown = tenth;
        io.err(`${line}\n`);
      }
    }
  };
}

function positiveInteger(value: string): number {
  const parsed = Number(value);
  if (!Number.isInteger(parsed) || parsed < 1) throw new InvalidArgumentError('a positive integer');
  return parsed;
}

function isoDate(value: string): Date {
  const parsed = new Date(value);
  if (Number.isNaN(parsed.getTime())) throw new InvalidArgumentError('a date like 2026-03-01');
  return parsed;
}

if (import.meta.main) await runProgram(createRulesProgram());
