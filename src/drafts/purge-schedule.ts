import cron from 'node-cron';
import type { DraftStore } from '../../fhir/draft-store.ts';
import type { Logger } from '../log.ts';
import type { Leadership } from '../storage/leadership.ts';

/**
 * What the service stores holds patient data, so it does not keep it longer than the site says: a
 * scheduled purge (node-cron) removes stored drafts and finished jobs whose last change is older than
 * the retention period. The job queue's purge is handed in as a function so this file does not
 * depend on which queue adapter runs. With replicas, only the leader purges on the schedule.
 */
export interface PurgeTargets {
  drafts: Pick<DraftStore, 'purge'>;
  /** Removes jobs that finished (done or dead-lettered) before the cutoff; returns how many. */
  finishedJobs?: (finishedBefore: Date) => Promise<number>;
}

export interface PurgeResult {
  cutoff: string;
  drafts: number;
  jobs: number;
}

const dayMs = 24 * 60 * 60 * 1000;

export async function purgeExpired(
  targets: PurgeTargets,
  retentionDays: number,
  now: Date = new Date(),
): Promise<PurgeResult> {
  const cutoff = new Date(now.getTime() - retentionDays * dayMs);
  const drafts = await targets.drafts.purge(cutoff);
  const jobs = (await targets.finishedJobs?.(cutoff)) ?? 0;
  return { cutoff: cutoff.toISOString(), drafts, jobs };
}

export interface PurgeSchedule {
  /** Runs the purge now (also what the schedule calls). */
  runNow(): Promise<PurgeResult>;
  stop(): Promise<void>;
}

export function schedulePurge(options: {
  targets: PurgeTargets;
  retentionDays: number;
  /** node-cron expression, e.g. '17 3 * * *'. */
  schedule: string;
  logger: Logger;
  /** Whether this replica purges on the schedule; absent: it does. */
  leadership?: Leadership;
  now?: () => Date;
}): PurgeSchedule {
  if (!cron.validate(options.schedule))
    throw new Error(`drafts.purgeSchedule is not a cron expression: ${options.schedule}`);
  let running: Promise<PurgeResult> | undefined;
  const runNow = () => {
    // One purge at a time: a slow purge must not overlap the next tick.
    running ??= purgeExpired(options.targets, options.retentionDays, options.now?.() ?? new Date())
      .then((result) => {
        options.logger.info(result, 'stored-data-purged');
        return result;
      })
      .finally(() => {
        running = undefined;
      });
    return running;
  };
  const task = cron.schedule(options.schedule, async () => {
    if (options.leadership && !options.leadership.isLeader) return;
    try {
      await runNow();
    } catch (error) {
      options.logger.error({ err: error }, 'stored-data-purge-failed');
    }
  });
  return {
    runNow,
    async stop() {
      await task.stop();
      await running?.catch(() => undefined);
    },
  };
}
