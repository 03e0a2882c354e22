import { ConfigError, loadConfig } from './config/load-config.ts';
import { createLogger } from './log.ts';
import { startService } from './service.ts';

/** `npm start`: read the configuration once, start, and shut down gracefully on SIGTERM/SIGINT. */
let config: ReturnType<typeof loadConfig>;
try {
  config = loadConfig();
} catch (error) {
  if (error instanceof ConfigError) {
    console.error(error.message);
    process.exit(2);
  }
  throw error;
}

const logger = createLogger({ level: config.logLevel });
const service = await startService(config, logger);
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
