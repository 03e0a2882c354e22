import type { Encounter } from 'fhir/r4.js';
import type { DraftEngine, DraftKind, NudgeInput } from '../../agents/draft-engine.ts';
import type { DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { type PatientRecord, retrievedVersions } from '../../fhir/patient-record.ts';
import type { Logger } from '../log.ts';
import { type CompletedWorkLedger, type EncounterJob, workKey } from '../queue/job-queue.ts';

/**
 * One job, start to end: re-read the Encounter (the notification is only a hint), decide the kind
 * of draft from its status, retrieve the history, let the rules pick nudges, let the engine write,
 * verify, and write the draft back. Returns a short outcome for the job record; throws an
 * OperationOutcomeError (retryable or not) when the job should be retried or dead-lettered.
 */
export interface PipelineDependencies {
  fhir: FhirClient;
  engine: DraftEngine;
  writer: DraftNoteWriter;
  triggers: Partial<Record<Encounter['status'], DraftKind>>;
  draftIdentifierSystem: string;
  logger: Logger;
  /** Rules evaluation; absent when no rules are configured. */
  selectNudges?: (record: PatientRecord, kind: DraftKind) => Promise<NudgeInput[]>;
  /** Idempotency: work keyed on (encounter id, versionId, kind, configuration version) done once. */
  completedWork?: CompletedWorkLedger;
  configurationVersion?: string;
}

export type JobOutcome =
  | 'draft-created'
  | 'draft-exists'
  | 'no-trigger'
  | 'encounter-gone'
  | `skipped:${string}`;

export async function processEncounterJob(
  job: EncounterJob,
  dependencies: PipelineDependencies,
): Promise<JobOutcome> {
  const { fhir, engine, writer, logger } = dependencies;
  let encounter: Encounter;
  try {
    encounter = await fhir.read<Encounter>('Encounter', job.encounterId);
  } catch (error) {
    // Deleted (410) or never there (404): nothing to draft, and retrying cannot change that.
    if (error instanceof OperationOutcomeError && (error.status === 404 || error.status === 410))
      return 'encounter-gone';
    throw error;
  }
  const kind = job.kind ?? dependencies.triggers[encounter.status];
  if (!kind) return 'no-trigger';
  const key = workKey({
    encounterId: job.encounterId,
    versionId: encounter.meta?.versionId ?? encounter.meta?.lastUpdated,
    kind,
    configurationVersion: dependencies.configurationVersion ?? 'unversioned',
  });
  // A clinician's regeneration request redoes work on purpose; everything else done once is skipped.
  if (job.source !== 'regenerate' && (await dependencies.completedWork?.hasCompleted(key)))
    return 'skipped:already-done';

  const startedAt = performance.now();
  const record = await retrievePatientRecord(fhir, encounter, {
    draftIdentifierSystem: dependencies.draftIdentifierSystem,
  });
  const retrievedAt = performance.now();
  const nudges = (await dependencies.selectNudges?.(record, kind)) ?? [];
  const result = await engine.draft({ kind, record, nudges });
  const draftedAt = performance.now();

  const versions = retrievedVersions(record);
  const sources = new Map(result.verification.cited.map((reference) => [reference, versions.get(reference)]));
  const written = await writer.write(
    {
      kind,
      title: result.title,
      text: result.text,
      engine: result.engine,
      prompt: result.prompt,
      ...(result.prompts ? { prompts: result.prompts } : {}),
      sources,
      verification: {
        cited: result.verification.cited.length,
        removed: result.verification.removed.length,
        flagged: result.verification.flagged,
      },
      rules: nudges.map((nudge) => ({ id: nudge.ruleId, version: nudge.ruleVersion })),
    },
    record.patient,
    encounter,
  );
  logger.info(
    {
      jobId: job.id,
      encounterId: encounter.id,
      kind,
      draftId: written.draft.id,
      created: written.created,
      resources: versions.size,
      notes: record.notes.length,
      nudges: nudges.length,
      citations: result.verification.cited.length,
      removedLines: result.verification.removed.length,
      retrievalMs: Math.round(retrievedAt - startedAt),
      draftingMs: Math.round(draftedAt - retrievedAt),
    },
    'draft-written',
  );
  const outcome = written.created ? 'draft-created' : 'draft-exists';
  await dependencies.completedWork?.recordCompleted(key, outcome);
  return outcome;
}
