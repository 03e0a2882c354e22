import path from 'node:path';
import { Command, InvalidArgumentError } from 'commander';
import type { ServiceConfig } from '../config/config-schema.ts';
import { loadConfig } from '../config/load-config.ts';
import type { EncounterJob, JobQueue, JobStatus } from '../queue/job-queue.ts';
import { openJobQueue } from '../queue/open-job-queue.ts';
import { effectiveQueueConfig } from '../storage/open-storage.ts';
import { runProgram } from './run-program.ts';

/**
 * `jobs`: the operator's view of the durable queue, on the same configuration as the service (SQLite
 * file in the data directory, or PostgreSQL). Lists jobs (the dead-letter list by default), shows
 * counts, and moves dead-lettered jobs back to pending. Prints ids, encounter ids and errors only.
 */
export interface CliIo {
  out: (text: string) => void;
  err: (text: string) => void;
}

const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

const statuses: JobStatus[] = ['pending', 'running', 'done', 'failed'];

function status(value: string): JobStatus {
  if (!statuses.includes(value as JobStatus)) throw new InvalidArgumentError(statuses.join(', '));
  return value as JobStatus;
}

function positive(value: string): number {
  const number = Number(value);
  if (!Number.isSafeInteger(number) || number < 1) throw new InvalidArgumentError('a whole number above 0');
  return number;
}

function table(jobs: EncounterJob[]): string {
  const rows = jobs.map((job) =>
    [
      job.id,
      job.encounterId,
      job.kind ?? '-',
      job.source,
      String(job.attempts),
      job.createdAt,
      job.lastError ?? job.outcome ?? '',
    ].join('\t'),
  );
  return `${['id', 'encounter', 'kind', 'source', 'attempts', 'created', 'error/outcome'].join('\t')}\n${rows.join('\n')}\n`;
}

export function createJobsProgram(options: { io?: CliIo; config?: () => ServiceConfig } = {}): Command {
  const io = options.io ?? processIo;
  const readConfig = options.config ?? (() => loadConfig());
  const withQueue = async <T>(work: (queue: JobQueue) => Promise<T>): Promise<T> => {
    const config = readConfig();
    // DATABASE_URL alone puts the queue in PostgreSQL, as it does for the service.
    const queue = await openJobQueue(effectiveQueueConfig(config), path.resolve(config.dataDir));
    try {
      return await work(queue);
    } finally {
      await queue.close();
    }
  };

  const program = new Command('jobs')
    .description('List queued, running, done and dead-lettered jobs; retry dead letters')
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  program
    .command('list')
    .description('list jobs (the dead-letter list unless --status says otherwise)')
    .option('--status <status>', statuses.join(' | '), status, 'failed')
    .option('--limit <n>', 'most jobs to show', positive, 100)
    .option('--json', 'JSON instead of a table')
    .action(async (flags: { status: JobStatus; limit: number; json?: boolean }) => {
      const jobs = await withQueue((queue) => queue.list(flags.status, flags.limit));
      io.out(flags.json ? `${JSON.stringify(jobs, null, 2)}\n` : table(jobs));
    });

  program
    .command('counts')
    .description('jobs per status')
    .action(async () => {
      io.out(`${JSON.stringify(await withQueue((queue) => queue.counts()))}\n`);
    });

  program
    .command('retry')
    .description('move dead-lettered jobs back to pending (ids, or --all)')
    .argument('[ids...]', 'job ids from `jobs list`')
    .option('--all', 'every job in the dead-letter list')
    .action(async (ids: string[], flags: { all?: boolean }) => {
      const outcome = await withQueue(async (queue) => {
        const targets = flags.all ? (await queue.list('failed', 10_000)).map((job) => job.id) : ids;
        if (targets.length === 0) throw new InvalidArgumentError('name job ids or pass --all');
        const retried: string[] = [];
        const unknown: string[] = [];
        for (const id of targets) ((await queue.retry(id)) ? retried : unknown).push(id);
        return { retried, unknown };
      });
      io.out(`retried ${outcome.retried.length} job(s)\n`);
      if (outcome.unknown.length > 0) {
        io.err(`not in the dead-letter list: ${outcome.unknown.join(', ')}\n`);
        process.exitCode = 1;
      }
    });
  return program;
}

if (import.meta.main) await runProgram(createJobsProgram());
