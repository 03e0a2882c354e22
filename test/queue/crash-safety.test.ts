import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { JobQueue } from '../../src/queue/job-queue.ts';
import { PgBossJobQueue } from '../../src/queue/pg-boss-job-queue.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';
import { draftsByEncounter, waitFor } from '../support/intake-harness.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';
import { startWorkerProcess } from '../support/worker-process.ts';

/**
 * Crash safety: 200 events queued, a worker in a child process killed with SIGKILL at random moments
 * (at least 20 times, each while work is still in flight), then a last worker finishes. Afterwards
 * every event has exactly one draft: none lost (lease expiry hands killed jobs out again), none
 * doubled (conditional create and the completed-work ledger). The same for both queue adapters.
 */
const events = 200;
const kills = 20;
const leaseMs = 1_000;
const policy = { maxAttempts: 30, backoffBaseMs: 50, backoffMaxMs: 500, leaseMs };

async function crashAndRecover(
  standIn: FhirStandIn,
  queue: JobQueue,
  environment: Record<string, string>,
): Promise<{ killsWithWorkInFlight: number }> {
  const ids = seedEncounters(standIn, events);
  expect((await queue.enqueue(ids.map((encounterId) => ({ encounterId, source: 'crash-test' })))).added).toBe(
    events,
  );
  let killsWithWorkInFlight = 0;
  for (let kill = 0; kill < kills; kill++) {
    const worker = startWorkerProcess(environment);
    await worker.ready;
    await new Promise((resolve) => setTimeout(resolve, 50 + Math.random() * 250));
    const counts = await queue.counts();
    if (counts.pending + counts.running > 0) killsWithWorkInFlight++;
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

function assertExactlyOnce(standIn: FhirStandIn) {
  const ids = standIn.all('Encounter').map((encounter) => encounter.id as string);
  const drafts = draftsByEncounter(standIn);
  const wrong = ids.filter((id) => drafts.get(id) !== 1);
  expect(wrong, `encounters without exactly one draft: ${wrong.slice(0, 5).join(', ')}`).toEqual([]);
  expect(standIn.created.get('DocumentReference')).toBe(ids.length);
  const provenanceTargets = standIn
    .all('Provenance')
    .map((provenance) => (provenance.target as { reference: string }[])[0].reference);
  expect(new Set(provenanceTargets).size).toBe(provenanceTargets.length);
}

describe('crash safety: SIGKILLed workers, one draft per event', () => {
  const cleanups: (() => Promise<void> | void)[] = [];
  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  });

  it('SQLite queue', async () => {
    const standIn = await startFhirStandIn({ latencyMs: 15 });
    const directory = mkdtempSync(path.join(tmpdir(), 'crash-sqlite-'));
    const file = path.join(directory, 'queue.sqlite');
    const queue = new SqliteJobQueue(file, policy);
    cleanups.push(
      () => standIn.close(),
      () => queue.close(),
      () => rmSync(directory, { recursive: true, force: true }),
    );
    const { killsWithWorkInFlight } = await crashAndRecover(standIn, queue, {
      WORKER_QUEUE_ADAPTER: 'sqlite',
      WORKER_QUEUE_FILE: file,
      WORKER_FHIR_BASE_URL: standIn.url,
      WORKER_LEASE_MS: String(leaseMs),
    });
    expect(killsWithWorkInFlight).toBeGreaterThanOrEqual(kills);
    expect((await queue.counts()).failed).toBe(0);
    assertExactlyOnce(standIn);
  }, 180_000);

  it.skipIf(!postgresAvailable)(
    'PostgreSQL queue (pg-boss)',
    async () => {
      const standIn = await startFhirStandIn({ latencyMs: 15 });
      const database = createTestDatabase();
      const queue = await PgBossJobQueue.open({
        ...policy,
        connectionString: database.url,
        superviseIntervalSeconds: 1,
      });
      cleanups.push(
        () => standIn.close(),
        () => database.drop(),
        () => queue.close(),
      );
      const { killsWithWorkInFlight } = await crashAndRecover(standIn, queue, {
        WORKER_QUEUE_ADAPTER: 'postgres',
        WORKER_DATABASE_URL: database.url,
        WORKER_FHIR_BASE_URL: standIn.url,
        WORKER_LEASE_MS: String(leaseMs),
      });
      expect(killsWithWorkInFlight).toBeGreaterThanOrEqual(kills);
      expect((await queue.counts()).failed).toBe(0);
      assertExactlyOnce(standIn);
    },
    240_000,
  );
});
