import { mkdirSync } from 'node:fs';
import type { Server } from 'node:http';
import path from 'node:path';
import { createExtractiveEngine } from '../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../fhir/draft-note.ts';
import { FhirClient } from '../fhir/fhir-client.ts';
import type { ServiceConfig } from './config/config-schema.ts';
import { createApp } from './http/app.ts';
import { configurationVersion } from './intake/configuration-version.ts';
import { IntakeService } from './intake/intake-service.ts';
import type { Logger } from './log.ts';
import { createMetrics } from './metrics.ts';
import { processEncounterJob } from './pipeline/process-encounter-job.ts';
import { WorkerPool } from './pipeline/worker-pool.ts';
import type { JobQueue } from './queue/job-queue.ts';
import { openJobQueue } from './queue/open-job-queue.ts';

/**
 * The composition root: the one place that wires config, queue, FHIR client, engines, rules and HTTP
 * together, and closes them in order on shutdown.
 */
export interface RunningService {
  url: string;
  fhirBaseUrl: string;
  queue: JobQueue;
  close(): Promise<void>;
}

function listen(app: ReturnType<typeof createApp>, port: number, host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, (error?: Error) => (error ? reject(error) : resolve(server)));
  });
}

export async function startService(config: ServiceConfig, logger: Logger): Promise<RunningService> {
  const dataDir = path.resolve(config.dataDir);
  // The data directory holds patient data (queued jobs, held drafts): private to the service's user.
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });

  const queue = await openJobQueue(config.queue, dataDir);
  const metrics = createMetrics(queue);
  let ready = false;
  let workers: WorkerPool | undefined;
  const intake = new IntakeService({
    config: config.intake,
    dataDir,
    queue,
    logger,
    metrics,
    onQueued: () => workers?.nudge(),
  });

  const app = createApp({
    queue,
    logger,
    notifySecret: config.notify.secret,
    maxBodyBytes: config.notify.maxBodyBytes,
    isReady: () => ready,
    onQueued: () => workers?.nudge(),
    metrics,
    notify: intake.notifyOptions(),
  });
  const server = await listen(app, config.port, config.host);
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = config.publicUrl ?? `http://${config.host === '0.0.0.0' ? 'localhost' : config.host}:${port}`;
  const fhirBaseUrl = config.fhir.baseUrl ?? `${url}/sandbox/fhir`;

  const fhir = new FhirClient({
    baseUrl: fhirBaseUrl,
    timeoutMs: config.fhir.timeoutMs,
    maxAttempts: config.fhir.maxAttempts,
    maxPages: config.fhir.maxPages,
  });
  const engine = createExtractiveEngine();
  const writer = new DraftNoteWriter(fhir, config.drafts.identifierSystem);
  workers = new WorkerPool({
    queue,
    concurrency: config.queue.concurrency,
    pollIntervalMs: config.queue.pollIntervalMs,
    logger,
    process: (job) =>
      processEncounterJob(job, {
        fhir,
        engine,
        writer,
        triggers: config.triggers,
        draftIdentifierSystem: config.drafts.identifierSystem,
        logger,
        completedWork: queue,
        configurationVersion:
          config.intake.configurationVersion ??
          configurationVersion({ triggers: config.triggers, drafts: config.drafts, engine: engine.id }),
      }),
    onSettled: (_job, outcome, durationMs) => {
      metrics.jobAttempts.inc({ outcome });
      metrics.jobDuration.observe({ outcome }, durationMs / 1000);
    },
  });
  workers.start();
  // The sandbox numbers its own subscription; a real server gets ours ensured.
  await intake.start(fhir, {
    subscription: config.fhir.baseUrl
      ? { endpoint: `${url}/notify`, secret: config.notify.secret }
      : undefined,
    schedulePolling: Boolean(config.fhir.baseUrl),
  });
  ready = true;
  logger.info({ url, fhirBaseUrl, sandbox: !config.fhir.baseUrl, engine: engine.id }, 'service-started');

  return {
    url,
    fhirBaseUrl,
    queue,
    async close() {
      ready = false;
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await intake.stop();
      await workers?.stop();
      await queue.close();
      server.closeAllConnections();
      logger.info('service-stopped');
    },
  };
}
