import path from 'node:path';
import type { ServiceConfig } from '../config/config-schema.ts';
import type { JobQueue } from './job-queue.ts';
import { SqliteJobQueue } from './sqlite-job-queue.ts';

/** The configured queue adapter: the embedded SQLite file, or PostgreSQL through pg-boss for replicas. */
export async function openJobQueue(
  queueConfig: ServiceConfig['queue'],
  dataDir: string,
  options: { superviseIntervalSeconds?: number } = {},
): Promise<JobQueue> {
  if (queueConfig.adapter === 'postgres') {
    if (!queueConfig.postgresUrl)
      throw new Error('queue.adapter is postgres but queue.postgresUrl (DATABASE_URL) is not set');
    // pg-boss is loaded only for the PostgreSQL adapter.
    const { PgBossJobQueue } = await import('./pg-boss-job-queue.ts');
    return PgBossJobQueue.open({
      ...queueConfig,
      connectionString: queueConfig.postgresUrl,
      superviseIntervalSeconds: options.superviseIntervalSeconds,
    });
  }
  return new SqliteJobQueue(path.join(dataDir, 'queue.sqlite'), queueConfig);
}
