import { afterEach, describe, expect, it } from 'vitest';
import type { DraftEngine } from '../../agents/draft-engine.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { silentLogger } from '../../src/log.ts';
import { type PipelineDependencies, processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import type { CompletedWorkLedger, EncounterJob } from '../../src/queue/job-queue.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';

/**
 * The completed-work ledger: work keyed on (encounter, version, kind, configuration version) is done
 * once. A job that finds its key done re-reads the Encounter and stops there: no history retrieval, no
 * model run, no write. A new version, another configuration or a clinician's regeneration does the work.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
let standIn: FhirStandIn | undefined;
afterEach(async () => {
  await standIn?.close();
  standIn = undefined;
});

class MemoryLedger implements CompletedWorkLedger {
  readonly done = new Map<string, string>();
  async hasCompleted(workKey: string): Promise<boolean> {
    return this.done.has(workKey);
  }
  async recordCompleted(workKey: string, outcome: string): Promise<void> {
    this.done.set(workKey, outcome);
  }
}

function job(id: string, source = 'subscription'): EncounterJob {
  const now = new Date().toISOString();
  return { id, encounterId: 'enc-0', source, status: 'running', attempts: 1, createdAt: now, runAt: now };
}

async function setUp(configurationVersion = 'config-1') {
  standIn = await startFhirStandIn();
  seedEncounters(standIn, 1);
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
  const completedWork = new MemoryLedger();
  const dependencies: PipelineDependencies = {
    fhir,
    engine,
    writer: new DraftNoteWriter(fhir, identifierSystem),
    triggers: { finished: 'progress-summary' },
    draftIdentifierSystem: identifierSystem,
    logger: silentLogger(),
    completedWork,
    configurationVersion,
  };
  return { standIn, engine, completedWork, dependencies };
}

describe('completed-work ledger', () => {
  it('skips work already done: the Encounter is re-read, nothing is retrieved, drafted or written', async () => {
    const { standIn, engine, completedWork, dependencies } = await setUp();
    expect(await processEncounterJob(job('job-1'), dependencies)).toBe('draft-created');
    expect([...completedWork.done]).toEqual([['enc-0|1|progress-summary|config-1', 'draft-created']]);

    const requestsBefore = standIn.requests.length;
    expect(await processEncounterJob(job('job-2'), dependencies)).toBe('skipped:already-done');
    expect(standIn.requests.slice(requestsBefore)).toEqual(['GET /Encounter/enc-0']);
    expect(engine.drafts).toBe(1);
  });

  it("does the work again for a new version, another configuration, or a clinician's regeneration", async () => {
    const { standIn, engine, completedWork, dependencies } = await setUp();
    await processEncounterJob(job('job-1'), dependencies);

    expect(await processEncounterJob(job('job-2', 'regenerate'), dependencies)).not.toBe(
      'skipped:already-done',
    );
    expect(engine.drafts).toBe(2);

    const encounter = standIn.get('Encounter', 'enc-0');
    standIn.write({ ...encounter, type: [{ text: 'Follow-up visit' }] });
    expect(await processEncounterJob(job('job-3'), dependencies)).not.toBe('skipped:already-done');
    expect(engine.drafts).toBe(3);
    expect(completedWork.done.has('enc-0|2|progress-summary|config-1')).toBe(true);

    // Another configuration goes past the ledger to the record (the draft of this version exists already).
    const requestsBefore = standIn.requests.length;
    const otherConfiguration = { ...dependencies, configurationVersion: 'config-2' };
    expect(await processEncounterJob(job('job-4'), otherConfiguration)).not.toBe('skipped:already-done');
    expect(standIn.requests.slice(requestsBefore).length).toBeGreaterThan(1);
    expect(completedWork.done.has('enc-0|2|progress-summary|config-2')).toBe(true);
  });
});
