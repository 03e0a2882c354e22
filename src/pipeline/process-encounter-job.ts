import type { Encounter } from 'fhir/r4.js';
import {
  type CitationVerification,
  citationScopeOf,
  EmptyDraftError,
  removalCounts,
  verifyCitations,
} from '../../agents/citation-verifier.ts';
import {
  applyContentPolicy,
  type ContentPolicy,
  defaultContentPolicy,
} from '../../agents/clinical-content-policy.ts';
import type {
  DraftEngine,
  DraftKind,
  DraftRequest,
  DraftResult,
  NudgeInput,
} from '../../agents/draft-engine.ts';
import {
  type DraftContent,
  type DraftNoteWriter,
  draftProvenanceBasis,
  type ExistingDraft,
} from '../../fhir/draft-note.ts';
import {
  encounterVersionOf,
  latestUpdate,
  recordChangeSince,
  writtenFromLaterEncounter,
} from '../../fhir/draft-refresh.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { encounterAfterDeath, isDeceased } from '../../fhir/patient-death.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import {
  type PatientRecord,
  type RecordOmission,
  recordResources,
  retrievedVersions,
} from '../../fhir/patient-record.ts';
import { recordAsOfVisit } from '../../fhir/record-as-of-visit.ts';
import type { Logger } from '../log.ts';
import { type CompletedWorkLedger, type EncounterJob, workKey } from '../queue/job-queue.ts';

/**
 * One job, start to end: re-read the Encounter (the notification is only a hint), decide the kind
 * of draft from its status, retrieve the history, let the rules pick nudges, let the engine write,
 * verify, and write the draft back. Returns a short outcome for the job record; throws an
 * OperationOutcomeError (retryable or not) when the job should be retried or dead-lettered.
 *
 * Verification is one stage here, for every engine: engines return unverified text, and only what
 * the verifier keeps, checked against what this run read of this patient, is ever written.
 */
export interface PipelineDependencies {
  fhir: FhirClient;
  engine: DraftEngine;
  writer: DraftNoteWriter;
  triggers: Partial<Record<Encounter['status'], DraftKind>>;
  draftIdentifierSystem: string;
  logger: Logger;
  /** The clock the record of a visit still to come is cut at (tests set it). */
  now?: () => Date;
  /** What drafts may say (sensitive and social findings); absent: the default, which leaves every sensitive category out. */
  contentPolicy?: ContentPolicy;
  /** Rules evaluation; absent when no rules are configured. */
  selectNudges?: (record: PatientRecord, kind: DraftKind) => Promise<NudgeInput[]>;
  /** Resource types the rules read beyond the standard history (asked at each job: rule sets reload). */
  additionalHistoryTypes?: () => readonly string[];
  /**
   * Encounters whose period ended more than this many days before now are not drafted (skipped:too-old):
   * a data migration, a bulk load or a first start must not queue drafts of visits from years ago.
   * Absent or 0: no limit.
   */
  maxAgeDays?: number;
  /** Idempotency: work keyed on (encounter id, versionId, kind, configuration version) done once. */
  completedWork?: CompletedWorkLedger;
  /**
   * The record's images (issue 18): fetched and read before the rules (which see their findings as %imageFindings),
   * their resources added to the record; returns the engine with the image section. Absent: no vision model.
   */
  readImages?: (record: PatientRecord) => Promise<(engine: DraftEngine) => DraftEngine>;
  configurationVersion?: string;
}

export type JobOutcome =
  | 'draft-created'
  | 'draft-exists'
  /** The untouched draft was rewritten in place for this version of its encounter. */
  | 'draft-refreshed'
  /** A clinician had the draft: it was kept as it is, and what changed in the record was noted beside it. */
  | 'record-change-noted'
  | 'no-trigger'
  | 'encounter-gone'
  /** A briefing for a patient who has died, or a draft for an encounter after (or not shown to be before) death. */
  | 'skipped:patient-deceased'
  /** The encounter ended longer ago than drafts.maxAgeDays: nobody is waiting for its draft. */
  | 'skipped:too-old'
  | `skipped:${string}`;

const dayMilliseconds = 24 * 60 * 60 * 1000;

/**
 * Whether the encounter ended more than maxAgeDays before now (its period's end, else its start). An
 * encounter without a readable date, or one still to come, is never too old: nobody can tell, so it is drafted.
 */
export function endedTooLongAgo(
  encounter: Encounter,
  maxAgeDays: number | undefined,
  now = new Date(),
): boolean {
  if (!maxAgeDays || maxAgeDays <= 0) return false;
  const ended = Date.parse(encounter.period?.end ?? encounter.period?.start ?? '');
  if (Number.isNaN(ended)) return false;
  return now.getTime() - ended > maxAgeDays * dayMilliseconds;
}

/** The verification stage: the engine's text against this patient's resources that the run read. */
export function verifyDraft(result: DraftResult, record: PatientRecord): CitationVerification {
  return verifyCitations(result.text, citationScopeOf(record, result.headings, result.shown));
}

export interface VerifiedDraft {
  result: DraftResult;
  verification: CitationVerification;
}

/**
 * Drafts and verifies. A draft left with no supported line is replaced by the engine's fallback's
 * (verified the same way); with none, or when that is empty too, nothing is written and the job
 * fails for good (an EmptyDraftError: retrying the same record cannot help).
 */
export async function draftVerified(
  engine: DraftEngine,
  request: DraftRequest,
  logger: Logger,
): Promise<VerifiedDraft> {
  let result = await engine.draft(request);
  let verification = verifyDraft(result, request.record);
  if (verification.cited.length === 0 && engine.fallback) {
    logger.warn(
      {
        encounterId: request.record.encounter.id,
        kind: request.kind,
        engine: result.engine.id,
        removedLines: verification.removed.length,
      },
      'draft kept no supported line, drafting with the fallback engine instead',
    );
    result = await engine.fallback.draft(request);
    verification = verifyDraft(result, request.record);
  }
  if (verification.cited.length === 0) throw new EmptyDraftError(verification.removed.length);
  return { result, verification };
}

/** Why notes were not read, as the draft's notice says it (after "1 note was" / "3 notes were"). */
const omissionWording: Record<RecordOmission['reason'], string> = {
  'too-large': "larger than the service's size limit",
  'no-text-layer': 'a PDF without a text layer (a scanned image?)',
  unreadable: 'in a form the service could not read',
  'timed-out': 'a PDF that took too long to read',
};

/**
 * The record a draft of this kind is made from, or undefined when none may be made. A briefing prepares a visit:
 * never for a patient who has died; a progress summary is written only for an encounter shown to start before the
 * death (a clinician still completes the chart of those). Otherwise rules, engines and the verifier see the chart
 * as it stood at the end of the visit: nothing dated later can be drafted, cited or make a rule fire (only the
 * change notice reads the whole chart). The site's content policy then takes out what no draft may say, so no
 * engine shows it to a model or cites it. The evaluation (src/eval) prepares its records with this same function.
 */
/**
 * The two views of the chart a draft is made from. `forRules` is the chart as it stood at the end of the visit:
 * rules decide on all of it, so a screening result the content policy withholds from the draft still stops a
 * "screening due" nudge. `record` is that chart less what the site's content policy withholds: the only view
 * engines, models and the citation verifier get. Undefined when no draft may be made (a deceased patient).
 */
export function recordsForDraft(
  retrieved: PatientRecord,
  kind: DraftKind,
  options: { now: Date; contentPolicy: ContentPolicy },
): { record: PatientRecord; forRules: PatientRecord } | undefined {
  if (
    isDeceased(retrieved.patient) &&
    (kind === 'previsit-briefing' || encounterAfterDeath(retrieved.patient, retrieved.encounter))
  )
    return undefined;
  const forRules = recordAsOfVisit(retrieved, options.now);
  return { forRules, record: applyContentPolicy(forRules, options.contentPolicy) };
}

/**
 * Nudges the draft may carry: one whose evidence names a resource the content policy withheld would state (and
 * cite) what the site keeps out of automatic drafts, so it is left to the rules' other channels (CDS Hooks).
 */
export function nudgesWithinPolicy(nudges: NudgeInput[], record: PatientRecord): NudgeInput[] {
  const shown = new Set(recordResources(record).map((resource) => `${resource.resourceType}/${resource.id}`));
  return nudges.filter((nudge) => nudge.evidence.every((reference) => shown.has(reference)));
}

/**
 * A draft made without part of the record says so: the reviewer must know a note was not read (over the
 * response cap, a scanned PDF, a malformed RTF), one line per reason. Added after verification because it
 * states what the service did, not a fact about the patient; the references are written without brackets so
 * they are not mistaken for citations.
 */
export function withOmissionNotice(text: string, record: PatientRecord): string {
  const omitted = record.omitted ?? [];
  if (omitted.length === 0) return text;
  const lines = (Object.keys(omissionWording) as RecordOmission['reason'][]).flatMap((reason) => {
    const notes = omitted.filter((omission) => omission.reason === reason);
    if (notes.length === 0) return [];
    const references = notes.map((omission) => omission.reference).join(', ');
    const count = notes.length === 1 ? '1 note was' : `${notes.length} notes were`;
    return [`_Not read: ${count} ${omissionWording[reason]} and left out of this draft (${references})._`];
  });
  return `${text}

${lines.join('\n\n')}`;
}

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
  // Decided before anything is read: a bulk load of old visits costs one Encounter read each, no history.
  // A clinician's explicit regeneration of an old visit's draft is still honoured.
  if (
    job.source !== 'regenerate' &&
    endedTooLongAgo(encounter, dependencies.maxAgeDays, dependencies.now?.())
  )
    return complete('skipped:too-old');

  const startedAt = performance.now();
  const retrieved = await retrievePatientRecord(fhir, encounter, {
    draftIdentifierSystem: dependencies.draftIdentifierSystem,
    logger,
    additionalTypes: dependencies.additionalHistoryTypes?.(),
  });
  const retrievedAt = performance.now();
  const records = recordsForDraft(retrieved, kind, {
    now: dependencies.now?.() ?? new Date(),
    contentPolicy: dependencies.contentPolicy ?? defaultContentPolicy,
  });
  if (!records) {
    logger.info({ jobId: job.id, encounterId: encounter.id, kind }, 'draft-skipped-patient-deceased');
    return complete('skipped:patient-deceased');
  }
  const { record, forRules } = records;
  const encounterVersion = encounterVersionOf(encounter);

  // A later version of an encounter that has a draft: refresh it while nobody has touched it, else note
  // what changed beside it. A regeneration always makes a new draft; drafts that recorded no basis (written
  // before drafts did) are left to the conditional create, as before.
  const found =
    job.source === 'regenerate' ? undefined : await writer.currentDraft(record.patient, encounter, kind);
  const existing = found?.basis?.encounterVersion !== undefined ? found : undefined;
  if (existing && existing.basis?.encounterVersion === encounterVersion) {
    await writer.completeProvenance(existing);
    return complete('draft-exists');
  }
  // The draft was written from a later version than this job read: the encounter changed while it waited.
  if (
    existing &&
    writtenFromLaterEncounter(existing.basis, { encounterUpdated: encounter.meta?.lastUpdated })
  )
    return complete('skipped:encounter-changed-meanwhile');
  if (existing?.touched) return complete(await noteRecordChange(existing));

  const additionalBefore = record.additional?.length ?? 0;
  const withImages = await dependencies.readImages?.(record);
  // The rules see the images read too (their resources, %imageFindings), on their own, unfiltered view of the visit.
  const imageResources = (record.additional ?? []).slice(additionalBefore);
  if (imageResources.length > 0) forRules.additional = [...(forRules.additional ?? []), ...imageResources];
  if (record.imageFindings) forRules.imageFindings = record.imageFindings;
  const nudges = nudgesWithinPolicy((await dependencies.selectNudges?.(forRules, kind)) ?? [], record);
  const { result, verification } = await draftVerified(
    withImages?.(engine) ?? engine,
    { kind, record, nudges },
    logger,
  );
  const draftedAt = performance.now();
  const removedReasons = removalCounts(verification);
  if (removedReasons['other-patient'] > 0) {
    // Never the lines themselves: they hold patient data, possibly another patient's.
    logger.warn(
      { jobId: job.id, encounterId: encounter.id, kind, lines: removedReasons['other-patient'] },
      'draft-cited-another-patient',
    );
  }

  const versions = retrievedVersions(record);
  const sources = new Map(verification.cited.map((reference) => [reference, versions.get(reference)]));
  const content: DraftContent = {
    kind,
    title: result.title,
    text: withOmissionNotice(verification.text, record),
    engine: result.engine,
    prompt: result.prompt,
    ...(result.prompts ? { prompts: result.prompts } : {}),
    sources,
    verification: {
      cited: verification.cited.length,
      removed: verification.removed.length,
      flagged: verification.flagged || result.flagged === true,
      // The reviewer is shown what was taken out and why (another patient's lines are withheld by the writer).
      removedLines: verification.removed,
    },
    rules: nudges.map((nudge) => ({ id: nudge.ruleId, version: nudge.ruleVersion })),
    basis: {
      ...(encounterVersion ? { encounterVersion } : {}),
      ...(encounter.meta?.lastUpdated ? { encounterUpdated: encounter.meta.lastUpdated } : {}),
      // How far the read reached is the server's, whatever the cut left out: else what was cut would look new later.
      ...(retrievedThrough(retrieved) ? { retrievedThrough: retrievedThrough(retrieved) } : {}),
    },
  };

  let written: Awaited<ReturnType<DraftNoteWriter['write']>>;
  if (existing) {
    const refresh = await writer.refresh(existing, content, record.patient, encounter);
    // A clinician edited, signed or rejected it while this job drafted: theirs stays, the change is noted.
    if (refresh.outcome === 'touched') return complete(await noteRecordChange(refresh.existing));
    // The encounter moved on while this job worked, and that version's job has refreshed the draft.
    if (refresh.outcome === 'superseded') return complete('skipped:encounter-changed-meanwhile');
    written = refresh.written;
  } else {
    written = await writer.write(content, record.patient, encounter);
  }
  logger.info(
    {
      jobId: job.id,
      encounterId: encounter.id,
      kind,
      draftId: written.draft.id,
      created: written.created,
      refreshed: existing !== undefined,
      resources: versions.size,
      notes: record.notes.length,
      nudges: nudges.length,
      engine: result.engine.id,
      citations: verification.cited.length,
      removedLines: verification.removed.length,
      removedReasons,
      retrievalMs: Math.round(retrievedAt - startedAt),
      draftingMs: Math.round(draftedAt - retrievedAt),
    },
    existing ? 'draft-refreshed' : 'draft-written',
  );
  return complete(written.created ? 'draft-created' : existing ? 'draft-refreshed' : 'draft-exists');

  async function complete(outcome: JobOutcome): Promise<JobOutcome> {
    await dependencies.completedWork?.recordCompleted(key, outcome);
    return outcome;
  }

  /** Counts and references only: what the record gained or lost since the draft was written. */
  async function noteRecordChange(draft: ExistingDraft): Promise<JobOutcome> {
    const change = recordChangeSince({
      encounter,
      basis: draft.basis,
      sources: draftProvenanceBasis(draft.document).sources,
      // The whole chart: a result that came after the visit is news for the clinician who holds the draft,
      // though no draft of the visit may state it.
      current: recordResources(retrieved),
      now: new Date(),
    });
    const kept = await writer.noteRecordChange(draft, change);
    logger.info(
      {
        jobId: job.id,
        encounterId: encounter.id,
        kind,
        draftId: draft.location.id,
        kept,
        added: change.added.length,
        changed: change.changed.length,
        removed: change.removed.length,
      },
      'draft-kept-record-changed',
    );
    return 'record-change-noted';
  }
}

/** How far the record read reached, by the FHIR server's own clock. */
function retrievedThrough(record: PatientRecord): string | undefined {
  return latestUpdate(recordResources(record));
}
