import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { WorkerPool } from '../../src/pipeline/worker-pool.ts';
import { PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';

/**
 * A worker process for crash tests: the real queue adapter, FHIR client, extractive engine, draft
 * writer and worker pool, configured from the environment. Prints "ready" once it takes jobs; the
 * test kills it with SIGKILL at random moments.
 */
const environment = process.env;
const policy = {
  maxAttempts: Number(environment.WORKER_MAX_ATTEMPTS ?? 30),
  backoffBaseMs: 50,
  backoffMaxMs: 500,
  leaseMs: Number(environment.WORKER_LEASE_MS ?? 2_000),
};
const queue =
  environment.WORKER_QUEUE_ADAPTER === 'postgres'
    ? await PgBossJobQueue.open({
        ...policy,
        connectionString: environment.WORKER_DATABASE_URL as string,
        superviseIntervalSeconds: 1,
      })
    : new SqliteJobQueue(environment.WORKER_QUEUE_FILE as string, policy);
const fhir = new FhirClient({
  baseUrl: environment.WORKER_FHIR_BASE_URL as string,
  timeoutMs: Number(environment.WORKER_FHIR_TIMEOUT_MS ?? 2_000),
  maxAttempts: Number(environment.WORKER_FHIR_ATTEMPTS ?? 3),
});
const engine = createExtractiveEngine();
const identifierSystem = 'urn:ehr-draft-agent:draft';
const writer = new DraftNoteWriter(fhir, identifierSystem);
const logger = silentLogger();
const workers = new WorkerPool({
  queue,
  concurrency: Number(environment.WORKER_CONCURRENCY ?? 4),
  pollIntervalMs: 20,
  logger,
  process: (job) =>
    processEncounterJob(job, {
      fhir,
      engine,
      writer,
      triggers: { finished: 'progress-summary' },
      draftIdentifierSystem: identifierSystem,
      logger,
      completedWork: queue,
      configurationVersion: 'crash-test',
    }),
});
workers.start();
process.stdout.write('ready\n');
process.on('SIGTERM', () => {
  void workers
    .stop(2_000)
    .then(() => queue.close())
    .then(() => process.exit(0));
});
