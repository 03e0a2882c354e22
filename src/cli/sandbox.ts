import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import type { ServiceConfig } from '../config/config-schema.ts';
import { loadConfig } from '../config/load-config.ts';
import { fhirBatchWriter, loadNdjsonFolder } from '../sandbox/load-ndjson.ts';
import type { CliIo } from './jobs.ts';
import { runProgram } from './run-program.ts';

/**
 * `sandbox`: try the service on your own data. `load <folder>` writes a folder of FHIR NDJSON (a
 * Synthea or bulk export) into the running service's sandbox EHR over FHIR, or into any FHIR server
 * given with --base. Every Encounter written notifies the service as a real EHR's would, so drafts
 * follow for the encounters whose status the service's triggers name.
 */
const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

function positive(value: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number) || number < 1) throw new InvalidArgumentError('a whole number above 0');
  return number;
}

/** Where the running service serves its sandbox EHR, from the same configuration it started with. */
function sandboxBaseOf(config: ServiceConfig): string {
  if (config.fhir.baseUrl) {
    throw new Error(
      `the service runs against ${config.fhir.baseUrl}, not its sandbox: pass --base to load into a FHIR server`,
    );
  }
  const host = config.host === '0.0.0.0' || config.host === '::' ? '127.0.0.1' : config.host;
  return `${(config.publicUrl ?? `http://${host}:${config.port}`).replace(/\/+$/, '')}/sandbox/fhir`;
}

export function createSandboxProgram(options: { io?: CliIo; config?: () => ServiceConfig } = {}): Command {
  const io = options.io ?? processIo;
  const readConfig = options.config ?? (() => loadConfig());
  const program = new Command('sandbox')
    .description("Load your own data into the running service's sandbox EHR (or another FHIR server)")
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  program
    .command('load')
    .description('write a folder of FHIR NDJSON (Synthea, a bulk export) as batch Bundles, ids kept')
    .argument('<folder>', 'folder of *.ndjson files, one resource per line')
    .option('--base <url>', "FHIR base to load into (default: the running service's sandbox)")
    .option(
      '--token-env <name>',
      "environment variable holding a bearer token for --base (default: the service's own authentication when --base is its FHIR server)",
    )
    .option('--batch-size <n>', 'resources per batch Bundle', positive, 200)
    .action(async (folder: string, flags: { base?: string; tokenEnv?: string; batchSize: number }) => {
      const config = readConfig();
      const baseUrl = flags.base ?? sandboxBaseOf(config);
      let accessToken: (() => Promise<string | undefined>) | undefined;
      if (flags.tokenEnv) {
        const token = process.env[flags.tokenEnv];
        if (!token) throw new Error(`the environment variable ${flags.tokenEnv} is empty`);
        accessToken = async () => token;
      } else if (flags.base && flags.base === config.fhir.baseUrl) {
        const provider = await createAccessTokenProvider(config.auth.backend, {
          fhirBaseUrl: flags.base,
          dataDir: path.resolve(config.dataDir),
        });
        accessToken = () => provider.getToken();
      }
      // Without a token the sandbox treats a loopback caller as the EHR's administrator.
      const result = await loadNdjsonFolder(
        fhirBatchWriter({
          baseUrl,
          accessToken,
          batchSize: flags.batchSize,
          timeoutMs: config.fhir.timeoutMs,
        }),
        path.resolve(folder),
      );
      const counts = Object.entries(result.resourceCounts)
        .sort(([left], [right]) => left.localeCompare(right))
        .map(([type, count]) => `${type}\t${count}\n`)
        .join('');
      io.out(`loaded into ${baseUrl}\n${counts}`);
      io.out(
        `conditional references resolved: ${result.resolvedReferences}, dropped (no match): ${result.droppedReferences}\n`,
      );
    });
  return program;
}

if (import.meta.main) await runProgram(createSandboxProgram());
