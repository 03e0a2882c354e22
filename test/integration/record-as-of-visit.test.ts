import path from 'node:path';
import type { DocumentReference, Encounter, FhirResource, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import type { DraftEngine, DraftKind } from '../../agents/draft-engine.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { silentLogger } from '../../src/log.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import type { GenerateRequest } from '../../src/model/provider.ts';
import { type JobOutcome, processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import type { EncounterJob } from '../../src/queue/job-queue.ts';
import { loadNdjsonFolder } from '../../src/sandbox/load-ndjson.ts';
import type { RunningService } from '../../src/service.ts';
import { citationsShown, cooperativeReply, ScriptedProvider } from '../support/scripted-model.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import { startSandboxService, waitForIdleQueue } from './service-harness.ts';

/**
 * The record as of the visit and deceased patients (issue 19, items 2, 4 and 6), on real Synthea output
 * (../shared/fixtures/synthea-r4) loaded into the sandbox EHR: a patient who died of lung cancer in 1989
 * after a hospice admission, with a death certification encounter four days after the death. The
 * pipeline runs against the sandbox's FHIR server with the extractive engine, the citation verifier and
 * the draft writer, and reads back what it wrote.
 */
const deceasedPatientId = '129c6ac7-8d06-89de-ad63-0204a93e76c3';
const diedAt = '1989-05-09T20:35:22-04:00';
/** A general examination on 1987-07-18, almost two years before the death. */
const earlyVisitId = '9e08ba04-77c6-ed37-bcce-87330454b4de';
const earlyVisitEnd = '1987-07-19T00:50:10-04:00';
/** Admission to hospice, 1989-04-15, ending at the death. */
const hospiceAdmissionId = '229fb378-84dc-f043-654e-5bd95904b653';
/** Death certification, 1989-05-13: after the death. */
const deathCertificationId = '443ea916-cdcc-8baa-5cce-c9ca11bb6dba';
const draftSystem = 'urn:test:record-as-of-visit';
/** A check-up on 1987-05-29, drafted by the model path. */
const checkUpId = '5363afe0-cb6f-ac47-eb79-4129e4404b52';
const checkUpEnd = '1987-05-29T01:49:41-04:00';

/** Every date element a cited resource may carry that says when it happened or became known. */
function datesOf(resource: FhirResource): string[] {
  const fields = resource as unknown as Record<string, unknown>;
  const values = [
    'effectiveDateTime',
    'issued',
    'authoredOn',
    'recordedDate',
    'onsetDateTime',
    'performedDateTime',
    'occurrenceDateTime',
    'recorded',
    'date',
  ].map((name) => fields[name]);
  for (const name of ['period', 'performedPeriod', 'effectivePeriod'])
    values.push((fields[name] as { start?: string } | undefined)?.start);
  return values.filter((value): value is string => typeof value === 'string');
}

/** The visit's own resources (its procedures, its note) stand whatever their date: they are the visit. */
function ofVisit(resource: FhirResource, encounterId: string): boolean {
  const fields = resource as unknown as {
    encounter?: { reference?: string };
    context?: { encounter?: { reference?: string }[] };
  };
  const here = `Encounter/${encounterId}`;
  return (
    fields.encounter?.reference === here ||
    (fields.context?.encounter ?? []).some((reference) => reference.reference === here)
  );
}

describe.skipIf(!sharedFixtures)('the record as of the visit, on a real Synthea patient', () => {
  let service: RunningService;
  let fhir: FhirClient;
  const recordsSeenByRules = new Map<string, PatientRecord>();

  beforeAll(async () => {
    // The patient's visits are from the 1980s: drafts.maxAgeDays (14 by default) would skip them all.
    ({ service, fhir } = await startSandboxService({
      EHR_AGENT_SANDBOX__PATIENTS: '1',
      EHR_AGENT_DRAFTS__MAX_AGE_DAYS: '0',
    }));
    const loaded = await loadNdjsonFolder(
      service.sandbox!,
      path.join(sharedFixtures as string, 'synthea-r4'),
    );
    expect(loaded.patientIds).toContain(deceasedPatientId);
  }, 120_000);
  afterAll(async () => {
    await service?.close();
  });

  async function runJob(
    encounterId: string,
    engine: DraftEngine = createExtractiveEngine(),
  ): Promise<JobOutcome> {
    const job: EncounterJob = {
      id: `job-${encounterId}`,
      encounterId,
      source: 'test',
      status: 'running',
      attempts: 1,
      createdAt: new Date().toISOString(),
      runAt: new Date().toISOString(),
    };
    return processEncounterJob(job, {
      fhir,
      engine,
      writer: new DraftNoteWriter(fhir, draftSystem),
      triggers: { finished: 'progress-summary', planned: 'previsit-briefing' },
      draftIdentifierSystem: draftSystem,
      logger: silentLogger(),
      // The rules' view of the record: what a rule would evaluate.
      selectNudges: async (record: PatientRecord, _kind: DraftKind) => {
        recordsSeenByRules.set(record.encounter.id as string, record);
        return [];
      },
    });
  }

  async function draftText(encounterId: string): Promise<string | undefined> {
    const documents = await fhir.search<DocumentReference>('DocumentReference', {
      encounter: `Encounter/${encounterId}`,
    });
    const draft = documents.find((document) =>
      document.identifier?.some((identifier) => identifier.system === draftSystem),
    );
    const data = draft?.content[0].attachment.data;
    return data === undefined ? undefined : decodeBase64Text(data, 'text/plain; charset=utf-8');
  }

  it('drafts a 1987 visit from the chart as it was then: nothing later is listed, cited or seen by the rules', async () => {
    expect(await runJob(earlyVisitId)).toBe('draft-created');
    const text = (await draftText(earlyVisitId)) as string;
    expect(text).toBeDefined();
    const cutoff = Date.parse(earlyVisitEnd);

    const citations = [...new Set(citationsIn(text))];
    expect(citations).toContain(`Encounter/${earlyVisitId}`);
    // Earlier visits are still summarised: the cut keeps the past.
    expect(citations.filter((reference) => reference.startsWith('Encounter/')).length).toBeGreaterThan(1);
    for (const reference of citations) {
      const [type, id] = reference.split('/');
      const resource = await fhir.read<FhirResource>(type as FhirResource['resourceType'], id);
      if (ofVisit(resource, earlyVisitId)) continue;
      for (const date of datesOf(resource))
        expect(Date.parse(date), `${reference} dated ${date}`).toBeLessThanOrEqual(cutoff);
    }
    expect(text).not.toMatch(/hospice|death/i);

    const record = recordsSeenByRules.get(earlyVisitId) as PatientRecord;
    expect(record.asOf).toBe(new Date(earlyVisitEnd).toISOString());
    expect(record.patient.deceasedDateTime).toBeUndefined();
    expect(record.encounters.length).toBeGreaterThan(1);
    for (const encounter of record.encounters)
      expect(Date.parse(encounter.period?.start ?? ''), encounter.id).toBeLessThanOrEqual(cutoff);
    for (const list of [record.conditions, record.procedures, record.medications, record.noteResources])
      for (const resource of list.filter((candidate) => !ofVisit(candidate, earlyVisitId)))
        for (const date of datesOf(resource))
          expect(Date.parse(date), `${resource.resourceType}/${resource.id}`).toBeLessThanOrEqual(cutoff);
  }, 120_000);

  it('gives the model path the same bound: it is shown nothing later, and a later citation it makes up is removed', async () => {
    // A model that also cites the death certification, which it was never shown.
    const provider = new ScriptedProvider({
      fallback: (request: GenerateRequest) =>
        request.schemaName === 'draft'
          ? JSON.stringify({
              sections: [
                {
                  heading: 'Assessment and problems',
                  lines: [
                    { text: 'Routine check-up.', citations: [`Encounter/${checkUpId}`] },
                    { text: 'Death certified.', citations: [`Encounter/${deathCertificationId}`] },
                  ],
                },
              ],
              suggestions: [],
            })
          : cooperativeReply(request),
    });
    const engine = new MedGemmaEngine({
      provider,
      prompts: PromptLibrary.load(),
      budget: agentBudgetSchema.parse({}),
      logger: silentLogger(),
    });
    expect(await runJob(checkUpId, engine)).toBe('draft-created');
    expect(provider.calls.length).toBeGreaterThan(1);

    const cutoff = Date.parse(checkUpEnd);
    const shown = new Set(
      provider.calls.flatMap((call) => citationsShown({ messages: call.messages } as GenerateRequest)),
    );
    expect(shown).toContain(`Encounter/${checkUpId}`);
    for (const reference of shown) {
      const [type, id] = reference.split('/');
      const resource = await fhir.read<FhirResource>(type as FhirResource['resourceType'], id);
      if (ofVisit(resource, checkUpId)) continue;
      for (const date of datesOf(resource))
        expect(Date.parse(date), `${reference} shown to the model, dated ${date}`).toBeLessThanOrEqual(
          cutoff,
        );
    }
    const prompts = provider.calls
      .flatMap((call) => call.messages.map((message) => message.content))
      .join('\n');
    expect(prompts).not.toMatch(/hospice|death certification/i);

    const text = (await draftText(checkUpId)) as string;
    expect(text).toContain(`[Encounter/${checkUpId}]`);
    expect(text).not.toContain(deathCertificationId);
  }, 120_000);

  it('still drafts the hospice admission, which began before the death', async () => {
    expect(await runJob(hospiceAdmissionId)).toBe('draft-created');
    expect(await draftText(hospiceAdmissionId)).toContain(`[Encounter/${hospiceAdmissionId}]`);
  }, 120_000);

  it('writes nothing for the death certification, an encounter after the death', async () => {
    const patient = await fhir.read<Patient>('Patient', deceasedPatientId);
    expect(patient.deceasedDateTime).toBe(diedAt);
    expect(await runJob(deathCertificationId)).toBe('skipped:patient-deceased');
    expect(await draftText(deathCertificationId)).toBeUndefined();
    expect(recordsSeenByRules.has(deathCertificationId)).toBe(false);
  }, 120_000);

  it('prepares no briefing for a visit planned for the deceased patient', async () => {
    const start = new Date(Date.now() + 86_400_000).toISOString();
    const planned: Encounter = {
      resourceType: 'Encounter',
      id: 'planned-after-death',
      status: 'planned',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: `Patient/${deceasedPatientId}` },
      period: { start },
    };
    await service.sandbox?.seed([planned]);
    expect(await runJob('planned-after-death')).toBe('skipped:patient-deceased');
    expect(await draftText('planned-after-death')).toBeUndefined();
  }, 120_000);

  it('the service’s own worker ends the death certification’s job skipped:patient-deceased', async () => {
    await service.queue.enqueue([{ encounterId: deathCertificationId, source: 'test' }]);
    await waitForIdleQueue(service, 120_000);
    const jobs = await service.queue.list('done', 1000);
    expect(jobs.find((job) => job.encounterId === deathCertificationId)?.outcome).toBe(
      'skipped:patient-deceased',
    );
  }, 180_000);
});
