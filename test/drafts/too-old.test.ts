import type { Encounter } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { DraftEngine } from '../../agents/draft-engine.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import {
  endedTooLongAgo,
  type PipelineDependencies,
  processEncounterJob,
} from '../../src/pipeline/process-encounter-job.ts';
import type { EncounterJob } from '../../src/queue/job-queue.ts';
import type { RunningService } from '../../src/service.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from '../integration/service-harness.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';

/**
 * Only visits that matter now (issue 19, item 7): an encounter that ended more than drafts.maxAgeDays ago
 * is not drafted. A bulk load of a patient's history must cost one Encounter read per old visit, not a
 * history retrieval and a draft in a clinician's review list.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const now = new Date('2026-12-07T12:00:00Z');
let standIn: FhirStandIn | undefined;
let service: RunningService | undefined;
afterEach(async () => {
  await standIn?.close();
  standIn = undefined;
  await service?.close();
  service = undefined;
});

function job(source = 'subscription'): EncounterJob {
  const at = now.toISOString();
  return {
    id: 'job-1',
    encounterId: 'enc-0',
    source,
    status: 'running',
    attempts: 1,
    createdAt: at,
    runAt: at,
  };
}

async function setUp(period: { start?: string; end?: string } | undefined, maxAgeDays: number | undefined) {
  standIn = await startFhirStandIn();
  seedEncounters(standIn, 1);
  standIn.write({ ...standIn.get('Encounter', 'enc-0'), period });
  const fhir = new FhirClient({ baseUrl: standIn.url, maxAttempts: 1 });
  const extractive = createExtractiveEngine();
  const engine: DraftEngine & { drafts: number } = {
    id: extractive.id,
    version: extractive.version,
    drafts: 0,
    draft(request) {
      this.drafts += 1;
      return extractive.draft(request);
    },
  };
  const dependencies: PipelineDependencies = {
    fhir,
    engine,
    writer: new DraftNoteWriter(fhir, identifierSystem),
    triggers: { finished: 'progress-summary' },
    draftIdentifierSystem: identifierSystem,
    logger: silentLogger(),
    maxAgeDays,
    now: () => now,
  };
  return { standIn, engine, dependencies };
}

describe('drafts.maxAgeDays', () => {
  it('skips an encounter that ended too long ago after one Encounter read: no history, no draft', async () => {
    const { standIn, engine, dependencies } = await setUp(
      { start: '1987-07-18T09:00:00Z', end: '1987-07-18T09:30:00Z' },
      14,
    );
    const before = standIn.requests.length;
    expect(await processEncounterJob(job(), dependencies)).toBe('skipped:too-old');
    expect(standIn.requests.slice(before)).toEqual(['GET /Encounter/enc-0']);
    expect(engine.drafts).toBe(0);
  });

  it('drafts a visit within the window, and any visit when the limit is 0', async () => {
    const recent = { start: '2026-11-30T09:00:00Z', end: '2026-11-30T09:30:00Z' };
    expect(await processEncounterJob(job(), (await setUp(recent, 14)).dependencies)).toBe('draft-created');
    await standIn?.close();
    const old = { start: '1987-07-18T09:00:00Z', end: '1987-07-18T09:30:00Z' };
    expect(await processEncounterJob(job(), (await setUp(old, 0)).dependencies)).toBe('draft-created');
  });

  it("honours a clinician's regeneration of an old visit's draft", async () => {
    const { dependencies } = await setUp({ start: '1987-07-18T09:00:00Z', end: '1987-07-18T09:30:00Z' }, 14);
    expect(await processEncounterJob(job('regenerate'), dependencies)).toBe('draft-created');
  });

  it('measures from the end of the period, else its start; an undated encounter is drafted', () => {
    const encounter = (period?: { start?: string; end?: string }) =>
      ({ resourceType: 'Encounter', status: 'finished', class: { code: 'AMB' }, period }) as const;
    // Started 20 days ago, ended 10 days ago: within 14 days.
    expect(endedTooLongAgo(encounter({ start: '2026-11-17', end: '2026-11-27' }), 14, now)).toBe(false);
    expect(endedTooLongAgo(encounter({ start: '2026-11-17' }), 14, now)).toBe(true);
    expect(endedTooLongAgo(encounter(undefined), 14, now)).toBe(false);
    expect(endedTooLongAgo(encounter({ start: 'not a date' }), 14, now)).toBe(false);
    // A planned visit in the future is never too old.
    expect(endedTooLongAgo(encounter({ start: '2027-01-10' }), 14, now)).toBe(false);
  });

  it('defaults to 14 days and reads EHR_AGENT_DRAFTS__MAX_AGE_DAYS', () => {
    expect(loadConfig({ env: {} }).drafts.maxAgeDays).toBe(14);
    expect(loadConfig({ env: { EHR_AGENT_DRAFTS__MAX_AGE_DAYS: '0' } }).drafts.maxAgeDays).toBe(0);
    expect(() => loadConfig({ env: { EHR_AGENT_DRAFTS__MAX_AGE_DAYS: '-3' } })).toThrow(/maxAgeDays/);
  });

  it('by default, the service skips a years-old visit it is told of, drafts a recent one, and counts both', async () => {
    const started = await startSandboxService({ EHR_AGENT_SANDBOX__PATIENTS: '1' });
    service = started.service;
    const [patient] = await started.fhir.search<{ resourceType: 'Patient'; id: string }>('Patient', {});
    const recent = finishedEncounter(patient.id, 'recent-visit');
    const old: Encounter = {
      ...finishedEncounter(patient.id, 'old-visit'),
      period: { start: '2019-03-04T09:00:00Z', end: '2019-03-04T09:30:00Z' },
    };
    for (const encounter of [old, recent]) await started.fhir.update(encounter);
    await postNotification(service, idOnlyNotification(service.fhirBaseUrl, 'old-visit', 1));
    await postNotification(service, idOnlyNotification(service.fhirBaseUrl, 'recent-visit', 2));
    await waitForIdleQueue(service);

    expect(await draftsFor(started.fhir, 'old-visit')).toHaveLength(0);
    expect(await draftsFor(started.fhir, 'recent-visit')).toHaveLength(1);
    const metrics = await (
      await fetch(`${service.url}/metrics`, { headers: { authorization: `Bearer ${service.adminSecret}` } })
    ).text();
    expect(metrics).toMatch(/ehr_agent_job_results_total\{result="skipped:too-old"\} 1\b/);
    expect(metrics).toMatch(/ehr_agent_job_results_total\{result="draft-created"\} 1\b/);
  }, 60_000);
});
