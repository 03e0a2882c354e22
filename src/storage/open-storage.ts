import type { ServiceConfig } from '../config/config-schema.ts';
import type { Logger } from '../log.ts';
import { AdvisoryLockLeadership, type Leadership, soleLeadership } from './leadership.ts';
import { PostgresDatabase } from './postgres-database.ts';

/**
 * The one storage setting: with PostgreSQL (`storage.adapter: postgres`, or a DATABASE_URL) every
 * store and the queue live in one shared database and replicas elect one leader for scheduled work;
 * otherwise each store keeps its SQLite file in the data directory and the process leads alone.
 */
export type StorageAdapter = 'sqlite' | 'postgres';

export function storageAdapter(config: Pick<ServiceConfig, 'storage' | 'queue'>): StorageAdapter {
  return config.storage.adapter ?? (config.queue.postgresUrl ? 'postgres' : 'sqlite');
}

/** The queue as the storage setting makes it: with PostgreSQL storage the queue is there too. */
export function effectiveQueueConfig(
  config: Pick<ServiceConfig, 'storage' | 'queue'>,
): ServiceConfig['queue'] {
  return storageAdapter(config) === 'postgres' ? { ...config.queue, adapter: 'postgres' } : config.queue;
}

export interface ServiceStorage {
  adapter: StorageAdapter;
  /** The shared database; absent with SQLite (each store opens its own file). */
  database: PostgresDatabase | undefined;
  leadership: Leadership;
  /** Runs the work alone among every holder of `name`: across replicas with PostgreSQL, in the process alone. */
  exclusive<Result>(name: string, work: () => Promise<Result>): Promise<Result>;
  close(): Promise<void>;
}

/** A keyed lock for one process: each name's holders run one after the other; idle names are forgotten. */
function processExclusive(): ServiceStorage['exclusive'] {
  const tails = new Map<string, Promise<unknown>>();
  return (name, work) => {
    const result = (tails.get(name) ?? Promise.resolve()).then(work);
    const tail = result.catch(() => undefined);
    tails.set(name, tail);
    void tail.then(() => {
      if (tails.get(name) === tail) tails.delete(name);
    });
    return result;
  };
}

export async function openStorage(
  config: Pick<ServiceConfig, 'storage' | 'queue'>,
  logger: Logger,
): Promise<ServiceStorage> {
  const adapter = storageAdapter(config);
  if (adapter === 'sqlite') {
    return {
      adapter,
      database: undefined,
      leadership: soleLeadership,
      exclusive: processExclusive(),
      close: async () => undefined,
    };
  }
  const connectionString = config.queue.postgresUrl;
  if (!connectionString)
    throw new Error('storage.adapter is postgres but DATABASE_URL (queue.postgresUrl) is not set');
  const database = await PostgresDatabase.open({ connectionString, schema: config.storage.schema });
  let leadership: Leadership;
  try {
    leadership = await AdvisoryLockLeadership.start({
      connectionString,
      name: `${config.storage.schema}:scheduler`,
      retryMs: config.storage.leaderRetryMs,
      onChange: (isLeader) =>
        logger.info({ isLeader }, isLeader ? 'scheduler-leader-elected' : 'scheduler-leader-lost'),
    });
  } catch (error) {
    await database.close();
    throw error;
  }
  return {
    adapter,
    database,
    leadership,
    exclusive: (name, work) => database.exclusive(name, work),
    async close() {
      await leadership.close();
      await database.close();
    },
  };
}
