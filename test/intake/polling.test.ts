import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { EventIntake } from '../../src/intake/event-intake.ts';
import { IntakeStateStore } from '../../src/intake/intake-state-store.ts';
import { PollingReconciler } from '../../src/intake/polling-reconciler.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { WorkerPool } from '../../src/pipeline/worker-pool.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';
import {
  draftsByEncounter,
  type IntakeHarness,
  startIntakeHarness,
  waitFor,
} from '../support/intake-harness.ts';

/**
 * The polling reconciler against a FHIR server over HTTP: late-committed updates inside the overlap
 * window are caught exactly once, (id, versionId) pairs already queued are not queued again, the
 * cursor survives a restart, and an Encounter deleted before the worker reads it ends its job cleanly.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function pollingRig(standIn: FhirStandIn, directory: string, overlapMs = 10_000) {
  const logger = silentLogger();
  const queue = new SqliteJobQueue(path.join(directory, 'queue.sqlite'), {
    maxAttempts: 3,
    backoffBaseMs: 50,
    backoffMaxMs: 200,
    leaseMs: 5_000,
  });
  const store = new IntakeStateStore(path.join(directory, 'intake.sqlite'));
  const fhir = new FhirClient({ baseUrl: standIn.url, timeoutMs: 2_000 });
  const intake = new EventIntake({ queue, logger });
  const reconciler = new PollingReconciler({
    fhir,
    store,
    intake,
    logger,
    overlapMs,
    pageSize: 7,
    initialLookbackMs: 60_000,
  });
  const close = async () => {
    await reconciler.stop();
    store.close();
    await queue.close();
  };
  return { queue, store, fhir, reconciler, close };
}

describe('polling reconciler', () => {
  it('catches late commits inside the overlap window once, pages through results, keeps its cursor', async () => {
    const standIn = await startFhirStandIn();
    const directory = mkdtempSync(path.join(tmpdir(), 'polling-'));
    cleanups.push(
      () => standIn.close(),
      () => rmSync(directory, { recursive: true, force: true }),
    );
    const ids = seedEncounters(standIn, 20);
    let rig = await pollingRig(standIn, directory);
    const first = await rig.reconciler.request('test');
    expect(first.queued).toBe(20); // three pages of 7
    expect((await rig.reconciler.request('test')).queued).toBe(0);

    // A transaction that began 3 s ago commits now: its lastUpdated is behind the cursor, inside the overlap.
    const late = standIn.write(
      { ...standIn.all('Encounter')[0], id: 'late-one' },
      { lastUpdated: new Date(Date.parse(first.cursor) - 3_000).toISOString() },
    );
    // And one from long before the window: the overlap does not reach it (a full reconcile would).
    standIn.write(
      { ...standIn.all('Encounter')[0], id: 'too-late' },
      { lastUpdated: new Date(Date.parse(first.cursor) - 600_000).toISOString() },
    );
    // A restart in between: the cursor and the dedupe memory are on disk.
    await rig.close();
    rig = await pollingRig(standIn, directory);
    cleanups.push(() => rig.close());
    expect((await rig.reconciler.request('test')).queued).toBe(1);
    expect((await rig.reconciler.request('test')).queued).toBe(0);
    const pending = await rig.queue.list('pending', 100);
    expect(pending.filter((job) => job.encounterId === late.id)).toHaveLength(1);
    expect(pending.some((job) => job.encounterId === 'too-late')).toBe(false);
    expect(pending).toHaveLength(21);

    // A new version of a known encounter is a new event.
    standIn.write({ ...standIn.get('Encounter', ids[3]), status: 'finished' });
    expect((await rig.reconciler.request('test')).queued).toBe(0); // collapses: a job for it is still waiting
    const claimed = await rig.queue.claim('w');
    await rig.queue.complete(claimed?.id as string, 'draft-created');
    standIn.write(standIn.get('Encounter', claimed?.encounterId as string));
    expect((await rig.reconciler.request('test')).queued).toBe(1);
  });

  it('a deleted Encounter (410 on re-read) ends the job cleanly', async () => {
    const standIn = await startFhirStandIn();
    const directory = mkdtempSync(path.join(tmpdir(), 'polling-'));
    const rig = await pollingRig(standIn, directory);
    cleanups.push(
      () => standIn.close(),
      () => rig.close(),
      () => rmSync(directory, { recursive: true, force: true }),
    );
    const [kept, deleted] = seedEncounters(standIn, 2);
    expect((await rig.reconciler.request('test')).queued).toBe(2);
    standIn.remove('Encounter', deleted);
    const logger = silentLogger();
    const workers = new WorkerPool({
      queue: rig.queue,
      concurrency: 1,
      pollIntervalMs: 20,
      logger,
      process: (job) =>
        processEncounterJob(job, {
          fhir: rig.fhir,
          engine: createExtractiveEngine(),
          writer: new DraftNoteWriter(rig.fhir, 'urn:test:draft'),
          triggers: { finished: 'progress-summary' },
          draftIdentifierSystem: 'urn:test:draft',
          logger,
          completedWork: rig.queue,
          configurationVersion: 'test',
        }),
    });
    workers.start();
    cleanups.push(() => workers.stop(1_000));
    await waitFor(async () => (await rig.queue.counts()).done === 2, 'both jobs done');
    const done = await rig.queue.list('done');
    expect(done.find((job) => job.encounterId === deleted)?.outcome).toBe('encounter-gone');
    expect(done.find((job) => job.encounterId === kept)?.outcome).toBe('draft-created');
    expect((await rig.queue.counts()).failed).toBe(0);
    expect(standIn.requests.filter((request) => request === `GET /Encounter/${deleted}`)).toHaveLength(1);
  });

  it('runs on its cron schedule inside the service', async () => {
    const harness: IntakeHarness = await startIntakeHarness({
      intake: { sources: { polling: true }, polling: { cron: '* * * * * *', initialLookbackMs: 60_000 } },
    });
    cleanups.push(() => harness.close());
    const ids = seedEncounters(harness.standIn, 3);
    await waitFor(
      () => ids.every((id) => draftsByEncounter(harness.standIn).get(id) === 1),
      'drafts from polling',
    );
    await waitFor(
      async () =>
        (await harness.metric('ehr_agent_reconciliations_total', { reason: 'schedule', outcome: 'done' })) >
        1,
      'scheduled polls',
    );
    expect(await harness.metric('ehr_agent_intake_events_total', { source: 'poll', outcome: 'queued' })).toBe(
      3,
    );
  });
});
