import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { IntakeService } from '../../src/intake/intake-service.ts';
import { silentLogger } from '../../src/log.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { testConfig } from '../support/intake-harness.ts';

/** CDS Hooks encounter-start / encounter-discharge calls become queued events with the implied kind. */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

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
  it('queues encounter-start as a pre-visit briefing and encounter-discharge as a progress summary', async () => {
    const { service, queue } = intakeService();
    expect(
      await service.enqueueFromCdsHook('encounter-start', {
        patientId: 'p1',
        encounterId: 'e1',
        userId: 'Practitioner/1',
      }),
    ).toMatchObject({ queued: 1 });
    expect(
      await service.enqueueFromCdsHook('encounter-discharge', { patientId: 'p1', encounterId: 'e1' }),
    ).toMatchObject({ queued: 1 });
    expect(
      await service.enqueueFromCdsHook('encounter-start', { patientId: 'p1', encounterId: 'e1' }),
    ).toMatchObject({ queued: 0 });
    expect(await service.enqueueFromCdsHook('patient-view', { patientId: 'p1' })).toMatchObject({
      queued: 0,
    });
    const jobs = await queue.list('pending');
    expect(jobs.map((job) => [job.encounterId, job.kind, job.source]).sort()).toEqual([
      ['e1', 'previsit-briefing', 'cds-hooks'],
      ['e1', 'progress-summary', 'cds-hooks'],
    ]);
    await expect(
      service.enqueueFromCdsHook('encounter-start', { patientId: 'p1', encounterId: '../x' }),
    ).rejects.toThrow(/encounterId/);
  });

  it('does nothing when the source is switched off', async () => {
    const { service, queue } = intakeService(false);
    expect(
      await service.enqueueFromCdsHook('encounter-start', { patientId: 'p1', encounterId: 'e1' }),
    ).toEqual({ queued: 0 });
    expect((await queue.counts()).pending).toBe(0);
  });
});
