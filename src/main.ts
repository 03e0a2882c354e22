import { ConfigError, loadConfig } from './config/load-config.ts';
import { createLogger } from './log.ts';
import { type RunningService, startService } from './service.ts';
import { StartupError } from './startup-error.ts';

/**
 * Every way start-up can fail ends in one line on stderr: the operator reads what to fix, not a stack trace or an
 * object dump. A StartupError or ConfigError already says what to change; anything else is unexpected, so its
 * message comes with the way to see its stack.
 */
function failStartup(error: unknown, exitCode: number, debug: boolean): never {
  if (error instanceof StartupError || error instanceof ConfigError) {
    process.stderr.write(`${error.message}\n`);
  } else {
    const message = (error instanceof Error ? error.message : String(error)).replace(/\p{Cc}+/gu, ' ').trim();
    process.stderr.write(
      debug && error instanceof Error && error.stack
        ? `${error.stack}\n`
        : `start-up failed: ${message} (run with LOG_LEVEL=debug for the stack trace)\n`,
    );
  }
  process.exit(exitCode);
}

/** `npm start`: read the configuration once, start, and shut down gracefully on SIGTERM/SIGINT. */
let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig();
} catch (error) {
  failStartup(error, error instanceof ConfigError ? 2 : 1, process.env.LOG_LEVEL === 'debug');
}

const logger = createLogger({ level: config.logLevel });
let service: RunningService;
try {
  service = await startService(config, logger);
} catch (error) {
  failStartup(error, 1, ['debug', 'trace'].includes(config.logLevel));
}
if (service.sandbox) {
  // Said plainly, outside the JSON log: nobody should mistake the sandbox for a real EHR.
  process.stderr.write(
    [
      '',
      'SANDBOX MODE: no FHIR_BASE_URL is set, so an embedded sandbox EHR with SYNTHETIC patients serves.',
      `  service          ${service.url}`,
      `  sandbox FHIR     ${service.fhirBaseUrl}`,
      `  health           ${service.url}/readyz`,
      `  operator APIs    ${service.url}/api/jobs (bearer: the admin secret in ${service.adminSecretFile ?? 'ADMIN_SECRET'})`,
      `  clinician view   ${service.url}/sandbox/launch   (patients; "Open the review app" launches it with SMART)`,
      '  try it           npm run demo   (finishes an encounter and prints the draft)',
      '',
    ].join('\n'),
  );
}

let stopping = false;
async function shutdown(signal: string) {
  if (stopping) return;
  stopping = true;
  logger.info({ signal }, 'shutting-down');
  const timer = setTimeout(() => {
    logger.error('shutdown took too long; exiting');
    process.exit(1);
  }, 30_000);
  timer.unref();
  await service.close();
  process.exit(0);
}
process.on('SIGTERM', () => void shutdown('SIGTERM'));
process.on('SIGINT', () => void shutdown('SIGINT'));
