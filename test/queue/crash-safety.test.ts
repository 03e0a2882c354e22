import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { JobQueue } from '../../src/queue/job-queue.ts';
import { PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { waitFor } from '../support/intake-harness.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';
import { type SandboxFhirProcess, startSandboxFhirProcess } from '../support/sandbox-fhir.ts';
import { startWorkerProcess } from '../support/worker-process.ts';

/**
 * Crash safety: 200 events queued, a worker in a child process killed with SIGKILL at random moments
 * (20 times while it was running jobs it had claimed), then a last worker finishes. Afterwards
 * every event has exactly one draft: none lost (lease expiry hands killed jobs out again), none
 * doubled (conditional create and the completed-work ledger). The same for both queue adapters.
 * The FHIR server is the project's sandbox EHR engine, in a process of its own.
 */
const events = 200;
const kills = 20;
// Long enough that a slow attempt is not handed out twice on a loaded machine, short enough to recover fast.
const leaseMs = 3_000;
const policy = { maxAttempts: 30, backoffBaseMs: 50, backoffMaxMs: 500, leaseMs };

const identifierSystem = 'urn:ehr-draft-agent:draft';

async function crashAndRecover(
  fhir: SandboxFhirProcess,
  queue: JobQueue,
  environment: Record<string, string>,
): Promise<{ killsWithWorkInFlight: number }> {
  const ids = fhir.encounterIds;
  expect((await queue.enqueue(ids.map((encounterId) => ({ encounterId, source: 'crash-test' })))).added).toBe(
    events,
  );
  let killsWithWorkInFlight = 0;
  // A kill counts only when the worker being killed holds a job it claimed itself: a job still leased
  // by an earlier, already killed worker keeps the same attempt number, so it is told apart from one
  // the current worker claimed (each claim is a new attempt).
  const claimed = (jobs: { id: string; attempts: number }[]) =>
    jobs.map((job) => `${job.id}#${job.attempts}`);
  for (let round = 0; killsWithWorkInFlight < kills && round < kills * 3; round++) {
    const heldBefore = new Set(claimed(await queue.list('running')));
    const claimedByThisWorker = async () =>
      claimed(await queue.list('running')).filter((attempt) => !heldBefore.has(attempt)).length;
    const worker = startWorkerProcess(environment);
    await worker.ready;
    await waitFor(async () => (await claimedByThisWorker()) > 0, 'the worker to claim a job', 10_000);
    await new Promise((resolve) => setTimeout(resolve, Math.random() * 250));
    if ((await claimedByThisWorker()) > 0) killsWithWorkInFlight++;
    worker.child.kill('SIGKILL');
    await worker.exited;
  }
  const last = startWorkerProcess(environment);
  await last.ready;
  await waitFor(
    async () => {
      const counts = await queue.counts();
      return counts.pending === 0 && counts.running === 0;
    },
    'the queue to drain',
    90_000,
  );
  last.child.kill('SIGTERM');
  await last.exited;
  return { killsWithWorkInFlight };
}

async function assertExactlyOnce(fhir: SandboxFhirProcess) {
  const drafts = await fhir.drafts(identifierSystem);
  const wrong = fhir.encounterIds.filter((id) => drafts.get(id) !== 1);
  expect(wrong, `encounters without exactly one draft: ${wrong.slice(0, 5).join(', ')}`).toEqual([]);
  const targets = await fhir.provenanceTargets();
  expect(new Set(targets).size).toBe(targets.length);
  expect(targets).toHaveLength(events);
}

describe('crash safety: SIGKILLed workers, one draft per event', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('SQLite queue', async () => {
    const fhir = await startSandboxFhirProcess(events);
    const directory = mkdtempSync(path.join(tmpdir(), 'crash-sqlite-'));
    const file = path.join(directory, 'queue.sqlite');
    const queue = new SqliteJobQueue(file, policy);
    cleanups.push(
      () => fhir.close(),
      () => queue.close(),
      () => rmSync(directory, { recursive: true, force: true }),
    );
    const { killsWithWorkInFlight } = await crashAndRecover(fhir, queue, {
      WORKER_QUEUE_ADAPTER: 'sqlite',
      WORKER_QUEUE_FILE: file,
      WORKER_FHIR_BASE_URL: fhir.url,
      WORKER_LEASE_MS: String(leaseMs),
      WORKER_CONCURRENCY: '2',
    });
    expect(killsWithWorkInFlight).toBe(kills);
    expect((await queue.counts()).failed).toBe(0);
    await assertExactlyOnce(fhir);
  }, 180_000);

  it.skipIf(!postgresAvailable)(
    'PostgreSQL queue (pg-boss)',
    async () => {
      const fhir = await startSandboxFhirProcess(events);
      const database = createTestDatabase();
      const queue = await PgBossJobQueue.open({
        ...policy,
        connectionString: database.url,
        superviseIntervalSeconds: 1,
      });
      cleanups.push(
        () => fhir.close(),
        () => database.drop(),
        () => queue.close(),
      );
      const { killsWithWorkInFlight } = await crashAndRecover(fhir, queue, {
        WORKER_QUEUE_ADAPTER: 'postgres',
        WORKER_DATABASE_URL: database.url,
        WORKER_FHIR_BASE_URL: fhir.url,
        WORKER_LEASE_MS: String(leaseMs),
        WORKER_CONCURRENCY: '2',
      });
      expect(killsWithWorkInFlight).toBe(kills);
      expect((await queue.counts()).failed).toBe(0);
      await assertExactlyOnce(fhir);
    },
    240_000,
  );
});
