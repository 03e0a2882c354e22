import { Command, InvalidArgumentError, Option } from 'commander';
import { ConfigurationError, type ConfigurationSpec, parseConfiguration } from '../eval/configurations.ts';
import { progressBar } from '../eval/progress.ts';
import { writeReports } from '../eval/report-writers.ts';
import { runEvaluation } from '../eval/run-eval.ts';
import type { SourceOption } from '../eval/sources.ts';
import { createLogger } from '../log.ts';
import { runProgram } from './run-program.ts';

/**
 * `npm run eval`: measures what a draft is worth before go-live. With no arguments it evaluates the
 * extractive engine on the embedded sandbox and writes eval-report/report.{md,html,json}. A bad score
 * never fails the run; `--min-recall` and `--max-unwanted` make it fail (exit 2) for a site's own CI.
 * `npm run eval -- signed` reports what clinicians did with the drafts (see src/eval/signed-drafts.ts).
 */
function patientCount(value: string): number {
  const number = Number(value);
  // The sandbox generates at most 2,000 patients, as its configuration allows.
  if (!Number.isSafeInteger(number) || number < 1 || number > 2000)
    throw new InvalidArgumentError('a whole number from 1 to 2000');
  return number;
}

function share(value: string): number {
  const number = Number(value);
  if (!Number.isFinite(number) || number < 0 || number > 1)
    throw new InvalidArgumentError('a number from 0 to 1');
  return number;
}

function lineCount(value: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number) || number < 0) throw new InvalidArgumentError('a whole number from 0');
  return number;
}

function httpUrl(value: string): string {
  try {
    const url = new URL(value);
    if (url.protocol === 'http:' || url.protocol === 'https:') return value.replace(/\/+$/, '');
  } catch {}
  throw new InvalidArgumentError('an http(s) URL');
}

function configuration(value: string, previous: ConfigurationSpec[] | undefined): ConfigurationSpec[] {
  try {
    return [...(previous ?? []), parseConfiguration(value)];
  } catch (error) {
    if (error instanceof ConfigurationError) throw new InvalidArgumentError(error.message);
    throw error;
  }
}

interface EvalFlags {
  sandbox?: boolean;
  fhirBase?: string;
  ndjson?: string;
  config?: ConfigurationSpec[];
  out: string;
  minRecall?: number;
  maxUnwanted?: number;
  patients?: number;
  seed: number;
}

function sourceOf(flags: EvalFlags): SourceOption {
  const chosen = [flags.sandbox, flags.fhirBase, flags.ndjson].filter(Boolean).length;
  if (chosen > 1) throw new InvalidArgumentError('choose one source: --sandbox, --fhir-base or --ndjson');
  if (flags.fhirBase) return { kind: 'fhir-base', url: flags.fhirBase, patients: flags.patients ?? 12 };
  if (flags.ndjson) return { kind: 'ndjson', folder: flags.ndjson, patients: flags.patients ?? 1000 };
  return { kind: 'sandbox', patients: flags.patients ?? 12, seed: flags.seed };
}

const program = new Command('eval')
  .description('Evaluate draft engines against a labelled set made from FHIR data')
  // `signed` has its own --fhir-base and --out: options after the subcommand are the subcommand's.
  .enablePositionalOptions()
  .addOption(
    new Option('--sandbox', 'the embedded sandbox with planted note statements (default)').conflicts([
      'fhirBase',
      'ndjson',
    ]),
  )
  .addOption(new Option('--fhir-base <url>', 'any FHIR R4 server (read only)').argParser(httpUrl))
  .option('--ndjson <folder>', 'an NDJSON folder (e.g. Synthea output), loaded into an embedded sandbox')
  .option(
    '--config <configuration>',
    'extractive | scripted | llama-cpp:<gguf> | remote:<url>[#model] (repeat for side by side)',
    configuration,
  )
  .option('--out <folder>', 'where report.md, report.html and report.json go', 'eval-report')
  .option('--min-recall <share>', 'exit 2 when any configuration recalls fewer facts than this', share)
  .option(
    '--max-unwanted <lines>',
    'exit 2 when any configuration writes more unwanted lines than this (target 0)',
    lineCount,
  )
  .option('--patients <count>', 'patients to evaluate (sandbox default 12)', patientCount)
  .option(
    '--seed <number>',
    'sandbox seed',
    (value) => {
      const number = Number(value);
      if (!Number.isSafeInteger(number)) throw new InvalidArgumentError('a whole number');
      return number;
    },
    20261127,
  )
  .action(async (flags: EvalFlags) => {
    const logger = createLogger({ level: 'warn', destination: process.stderr });
    const report = await runEvaluation({
      source: sourceOf(flags),
      configurations: flags.config ?? [parseConfiguration('extractive')],
      logger,
      progress: progressBar(),
    });
    const files = writeReports(report, flags.out);
    for (const figures of report.configurations) {
      const recall = figures.factRecall.overall.value;
      process.stdout.write(
        `${figures.name}: fact recall ${recall ?? 'n/a'}, statement support ${figures.statementSupport.value ?? 'n/a'}, wrong-patient citations ${figures.wrongPatientCitations}, unwanted lines ${figures.unwantedLines.total}\n`,
      );
    }
    process.stdout.write(`wrote ${files.markdown}, ${files.html}, ${files.json}\n`);
    if (flags.minRecall !== undefined) {
      const below = report.configurations.filter(
        (figures) => (figures.factRecall.overall.value ?? 0) < (flags.minRecall as number),
      );
      if (below.length > 0) {
        process.stderr.write(
          `fact recall below --min-recall ${flags.minRecall}: ${below.map((figures) => `${figures.name} ${figures.factRecall.overall.value ?? 'n/a'}`).join(', ')}\n`,
        );
        process.exitCode = 2;
      }
    }
    if (flags.maxUnwanted !== undefined) {
      const above = report.configurations.filter(
        (figures) => figures.unwantedLines.total > (flags.maxUnwanted as number),
      );
      if (above.length > 0) {
        process.stderr.write(
          `unwanted lines above --max-unwanted ${flags.maxUnwanted}: ${above.map((figures) => `${figures.name} ${figures.unwantedLines.total}`).join(', ')}\n`,
        );
        process.exitCode = 2;
      }
    }
  });

program
  .command('signed')
  .description(
    'What clinicians did with the drafts: edit distance per section, rejection reasons, nudge acceptance per rule version',
  )
  .option(
    '--fhir-base <url>',
    'the FHIR server the drafts were written to (default: the service configuration)',
    httpUrl,
  )
  .option('--out <folder>', 'where signed.md and signed.json go', 'eval-report')
  .action(async (flags: { fhirBase?: string; out: string }) => {
    const { runSignedReport } = await import('../eval/signed-drafts.ts');
    await runSignedReport(flags);
  });

await runProgram(program);
