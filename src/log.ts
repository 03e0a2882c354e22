import { type Logger, pino } from 'pino';

/**
 * The one logger. Log lines carry ids (job, encounter, resource ids) and counts, never names,
 * birth dates, identifiers or note text. The redact list is a safety net for fields that
 * should never have been logged in the first place; it is not a licence to log resources.
 */
const redactedPaths = [
  'name',
  '*.name',
  'birthDate',
  '*.birthDate',
  'identifier',
  '*.identifier',
  'text',
  '*.text',
  'note',
  '*.note',
  'content',
  '*.content',
  'data',
  '*.data',
  'authorization',
  '*.authorization',
  'headers.authorization',
  'token',
  '*.token',
  'access_token',
  '*.access_token',
  'resource',
  '*.resource',
];

export type { Logger };

export function createLogger(options: { level?: string; destination?: NodeJS.WritableStream } = {}): Logger {
  return pino(
    {
      level: options.level ?? process.env.LOG_LEVEL ?? 'info',
      base: { service: 'ehr-draft-agent' },
      redact: { paths: redactedPaths, censor: '[redacted]' },
      timestamp: pino.stdTimeFunctions.isoTime,
    },
    options.destination ?? process.stdout,
  );
}

/** A logger that drops everything, for tests and tools that must print only their own output. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
