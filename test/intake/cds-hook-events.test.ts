import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Encounter } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import { IntakeService } from '../../src/intake/intake-service.ts';
import { silentLogger } from '../../src/log.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { testConfig } from '../support/intake-harness.ts';

/**
 * CDS Hooks encounter-start / encounter-discharge calls become queued events, but only for an encounter of
 * the patient in context, and without a kind of their own: the encounter's status decides when the job runs.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

const encounters: Record<string, Encounter> = {
  e1: {
    resourceType: 'Encounter',
    id: 'e1',
    meta: { versionId: '3' },
    status: 'planned',
    class: { code: 'AMB' },
    subject: { reference: 'Patient/p1' },
  },
  'other-patients': {
    resourceType: 'Encounter',
    id: 'other-patients',
    status: 'finished',
    class: { code: 'AMB' },
    subject: { reference: 'https://ehr.example/fhir/Patient/p2' },
  },
};
const reads: string[] = [];
async function readEncounter(id: string): Promise<Encounter> {
  reads.push(id);
  const encounter = encounters[id];
  if (!encounter) throw outcomeError('not-found', 'no such encounter', 404);
  return encounter;
}

function intakeService(cdsHooks = true) {
  const dataDir = mkdtempSync(path.join(tmpdir(), 'cds-'));
  const config = testConfig('http://127.0.0.1:9/fhir', dataDir, { intake: { sources: { cdsHooks } } });
  const queue = new SqliteJobQueue(path.join(dataDir, 'queue.sqlite'), config.queue);
  const service = new IntakeService({ config: config.intake, dataDir, queue, logger: silentLogger() });
  cleanups.push(
    () => rmSync(dataDir, { recursive: true, force: true }),
    () => queue.close(),
    () => service.stop(),
  );
  return { service, queue };
}

describe('CDS Hooks calls as events', () => {
  it('queues an encounter of the patient in context once, leaving the kind to its status', async () => {
    const { service, queue } = intakeService();
    const context = { patientId: 'p1', encounterId: 'e1', userId: 'Practitioner/1' };
    expect(await service.enqueueFromCdsHook('encounter-start', context, readEncounter)).toEqual({
      queued: 1,
    });
    // The same encounter version again (discharge, or a repeated start) folds into the waiting job.
    expect(await service.enqueueFromCdsHook('encounter-discharge', context, readEncounter)).toEqual({
      queued: 0,
    });
    expect(await service.enqueueFromCdsHook('patient-view', { patientId: 'p1' }, readEncounter)).toEqual({
      queued: 0,
    });
    const jobs = await queue.list('pending');
    expect(jobs.map((job) => [job.encounterId, job.kind, job.source])).toEqual([
      ['e1', undefined, 'cds-hooks'],
    ]);
  });

  it("refuses another patient's encounter, a missing one and a bad id, queueing nothing", async () => {
    const { service, queue } = intakeService();
    reads.length = 0;
    for (const encounterId of ['other-patients', 'no-such-encounter']) {
      await expect(
        service.enqueueFromCdsHook('encounter-start', { patientId: 'p1', encounterId }, readEncounter),
      ).rejects.toMatchObject({ status: 400, message: expect.stringMatching(/not an encounter of/) });
    }
    for (const encounterId of ['../x', '..']) {
      await expect(
        service.enqueueFromCdsHook('encounter-start', { patientId: 'p1', encounterId }, readEncounter),
      ).rejects.toMatchObject({ status: 400 });
    }
    expect(reads).toEqual(['other-patients', 'no-such-encounter']);
    expect((await queue.counts()).pending).toBe(0);
  });

  it('does nothing when the source is switched off', async () => {
    const { service, queue } = intakeService(false);
    expect(
      await service.enqueueFromCdsHook(
        'encounter-start',
        { patientId: 'p1', encounterId: 'e1' },
        readEncounter,
      ),
    ).toEqual({ queued: 0 });
    expect((await queue.counts()).pending).toBe(0);
  });
});
