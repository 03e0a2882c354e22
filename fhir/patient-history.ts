import type { Bundle, DocumentReference, Encounter, FhirResource, Patient } from 'fhir/r4.js';
import { type FhirClient, ResponseTooLargeError } from './fhir-client.ts';
import {
  binaryNoteText,
  defaultMaxNoteCharacters,
  readNoteText,
  textAttachment,
  UnreadableNoteError,
} from './note-text.ts';
import { OperationOutcomeError, outcomeError } from './operation-outcome.ts';
import {
  additionalHistoryTypes,
  type ClinicalNote,
  type PatientRecord,
  type PatientResourceLists,
  type RecordOmission,
} from './patient-record.ts';
import { PatientScopedReader, patientIdInReference, patientReferenceOf } from './patient-scope.ts';

export { assertInCompartment, patientReferenceOf } from './patient-scope.ts';

/**
 * Retrieves one patient's history for one event in as few round trips as the server allows: one
 * batch Bundle when its CapabilityStatement offers batch, otherwise per-type searches in parallel
 * within a limit. Every read goes through a PatientScopedReader (the compartment guard), notes are
 * decoded honouring their charset (each cut at a cap, with a marker), a note whose attachment is over
 * the client's response cap is left out and listed in `record.omitted`, and the service's own drafts
 * are left out so a summary never summarises an earlier summary.
 */

/** Where retrieval reports what it left out: counts and ids only (a pino logger fits). */
export interface HistoryLogger {
  warn(fields: Record<string, unknown>, message: string): void;
}

export interface HistoryOptions {
  /** Identifier system of the drafts this service writes. */
  draftIdentifierSystem: string;
  /** How many searches or note reads run at once. */
  concurrency?: number;
  pageSize?: number;
  /** auto: a batch Bundle when the server offers batch; never: always separate searches. */
  batch?: 'auto' | 'never';
  /** `_elements` per resource type, where the full resource carries bytes nobody downstream reads. */
  elements?: Partial<Record<string, string>>;
  /** Longest text kept per note; the rest is cut with a visible marker. */
  maxNoteCharacters?: number;
  logger?: HistoryLogger;
  /**
   * Further resource types to load (the site's CQL rules read them), into `record.additional`. Only
   * types in `additionalHistoryTypes`; a server that refuses one (4xx) is noted in `record.unreadTypes`
   * rather than failing the whole record, so the rules that read it can say they could not run.
   */
  additionalTypes?: readonly string[];
}

export { additionalHistoryTypes } from './patient-record.ts';

/** Types whose `medicationReference` points at a Medication a CQL code filter may look through. */
const medicationReferrers = new Set([
  'MedicationRequest',
  'MedicationStatement',
  'MedicationAdministration',
  'MedicationDispense',
]);

const searchesByList: Record<keyof PatientResourceLists, FhirResource['resourceType']> = {
  conditions: 'Condition',
  medications: 'MedicationRequest',
  allergies: 'AllergyIntolerance',
  observations: 'Observation',
  encounters: 'Encounter',
  procedures: 'Procedure',
  immunizations: 'Immunization',
  noteResources: 'DocumentReference',
};

/**
 * Earlier encounters are read for their dates, kinds and reasons; their participants, locations and
 * identifiers are most of their bytes and nothing downstream reads them.
 */
export const defaultElements: Partial<Record<string, string>> = {
  Encounter:
    'id,meta,status,class,type,serviceType,priority,subject,period,length,reasonCode,reasonReference,diagnosis,hospitalization',
};

/** Runs tasks with at most `limit` in flight, keeping their order. */
export async function mapWithConcurrency<T, R>(
  items: T[],
  limit: number,
  task: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(Math.max(1, limit), items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index]);
    }
  });
  await Promise.all(workers);
  return results;
}

export function isOwnDraft(document: DocumentReference, draftIdentifierSystem: string): boolean {
  return (document.identifier ?? []).some((identifier) => identifier.system === draftIdentifierSystem);
}

/** The compartment guard for one event: a reader bound to the Encounter's patient. */
export function openPatientScope(client: FhirClient, encounter: Encounter): PatientScopedReader {
  const patientId = patientIdInReference(patientReferenceOf(encounter));
  if (!patientId) throw outcomeError('invalid', `Encounter/${encounter.id} has no patient subject`, 422);
  return new PatientScopedReader(client, patientId);
}

export async function retrievePatientRecord(
  client: FhirClient,
  encounter: Encounter,
  options: HistoryOptions,
): Promise<PatientRecord> {
  return retrievePatientHistory(openPatientScope(client, encounter), encounter, options);
}

/**
 * The record of a patient named by a caller (a CDS Hooks context) rather than by an event: the
 * encounter, when named, must be that patient's; without one (patient-view) the record stands on an
 * upcoming visit of that patient, so nothing can widen the read beyond them.
 */
export async function retrievePatientRecordInContext(
  client: FhirClient,
  context: { patientId: string; encounterId?: string },
  options: HistoryOptions,
): Promise<PatientRecord> {
  const encounter: Encounter = context.encounterId
    ? await client.read<Encounter>('Encounter', context.encounterId)
    : {
        resourceType: 'Encounter',
        id: 'patient-view',
        status: 'planned',
        class: { code: 'AMB' },
        subject: { reference: `Patient/${context.patientId}` },
      };
  if (patientReferenceOf(encounter) !== `Patient/${context.patientId}`) {
    throw outcomeError('forbidden', 'the encounter does not belong to the patient in context', 403);
  }
  return retrievePatientRecord(client, encounter, options);
}

function searchParams(resourceType: string, options: HistoryOptions): Record<string, string | number> {
  const elements = (options.elements ?? defaultElements)[resourceType];
  return { _count: options.pageSize ?? 200, ...(elements ? { _elements: elements } : {}) };
}

type Lists = Record<keyof PatientResourceLists, FhirResource[]>;

/** One search per type: the history lists' types, then the further types rules asked for. */
interface SearchPlan {
  listNames: (keyof PatientResourceLists)[];
  additionalTypes: string[];
}

interface SearchAnswers {
  patient: Patient;
  lists: Lists;
  additional: FhirResource[];
  unreadTypes: { resourceType: string; status: number }[];
}

/**
 * The Medications the record's medication resources reference (CQL translators turn a code filter on
 * `medication` into a look-up through them). A dangling reference is skipped; a refusal is noted.
 */
async function referencedMedications(
  reader: PatientScopedReader,
  resources: FhirResource[],
  options: HistoryOptions,
): Promise<{ medications: FhirResource[]; refused: number | undefined }> {
  const ids = new Set<string>();
  for (const resource of resources) {
    if (!medicationReferrers.has(resource.resourceType)) continue;
    const reference = (resource as { medicationReference?: { reference?: string } }).medicationReference
      ?.reference;
    const id = /^(?:.*\/)?Medication\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/.exec(
      reference ?? '',
    )?.[1];
    if (id) ids.add(id);
  }
  let refused: number | undefined;
  const read = await mapWithConcurrency([...ids], options.concurrency ?? 4, async (id) => {
    try {
      return await reader.read<FhirResource>('Medication', id);
    } catch (error) {
      if (!(error instanceof OperationOutcomeError) || error.isRetryable || error.status >= 500) throw error;
      if (error.status !== 404 && error.status !== 410) refused = error.status;
      return undefined;
    }
  });
  return {
    medications: read.filter((resource): resource is FhirResource => resource !== undefined),
    refused,
  };
}

function planTypes(plan: SearchPlan): string[] {
  return [...plan.listNames.map((name) => searchesByList[name]), ...plan.additionalTypes];
}

/** A further type the server refuses (4xx) is noted, not fatal; the history lists' types stay required. */
async function tolerated(
  resourceType: string,
  plan: SearchPlan,
  search: () => Promise<FhirResource[]>,
): Promise<FhirResource[] | OperationOutcomeError> {
  try {
    return await search();
  } catch (error) {
    if (
      plan.additionalTypes.includes(resourceType) &&
      error instanceof OperationOutcomeError &&
      !error.isRetryable &&
      error.status >= 400 &&
      error.status < 500
    )
      return error;
    throw error;
  }
}

function answers(
  patient: Patient,
  plan: SearchPlan,
  results: (FhirResource[] | OperationOutcomeError)[],
): SearchAnswers {
  const lists = Object.fromEntries(plan.listNames.map((name, index) => [name, results[index]])) as Lists;
  const additional: FhirResource[] = [];
  const unreadTypes: SearchAnswers['unreadTypes'] = [];
  plan.additionalTypes.forEach((resourceType, offset) => {
    const result = results[plan.listNames.length + offset];
    if (result instanceof OperationOutcomeError) unreadTypes.push({ resourceType, status: result.status });
    else additional.push(...result);
  });
  return { patient, lists, additional, unreadTypes };
}

async function searchSeparately(
  reader: PatientScopedReader,
  plan: SearchPlan,
  options: HistoryOptions,
): Promise<SearchAnswers> {
  const [patient, ...results] = await mapWithConcurrency<
    string,
    Patient | FhirResource[] | OperationOutcomeError
  >(['Patient', ...planTypes(plan)], options.concurrency ?? 4, (resourceType) => {
    if (resourceType === 'Patient') return reader.read<Patient>('Patient', reader.patientId);
    return tolerated(resourceType, plan, () =>
      reader.search(resourceType as FhirResource['resourceType'], searchParams(resourceType, options)),
    );
  });
  return answers(patient as Patient, plan, results as (FhirResource[] | OperationOutcomeError)[]);
}

/** One round trip for the Patient and every search; an entry the server refused is retried on its own. */
async function searchInOneBatch(
  reader: PatientScopedReader,
  plan: SearchPlan,
  options: HistoryOptions,
): Promise<SearchAnswers> {
  const types = planTypes(plan);
  const answer = await reader.batch(
    types.map((resourceType) => ({ resourceType, params: searchParams(resourceType, options) })),
  );
  const patient =
    answer.patient instanceof OperationOutcomeError
      ? await retryAlone(answer.patient, () => reader.read<Patient>('Patient', reader.patientId))
      : answer.patient;
  const results = await mapWithConcurrency(
    types.map((resourceType, index) => ({
      resourceType: resourceType as FhirResource['resourceType'],
      result: answer.searches[index],
    })),
    options.concurrency ?? 4,
    ({ resourceType, result }) =>
      tolerated(resourceType, plan, () => {
        if (result instanceof OperationOutcomeError)
          return retryAlone(result, () => reader.search(resourceType, searchParams(resourceType, options)));
        return collectOrSearchAgain(reader, resourceType, result, options);
      }),
  );
  return answers(patient, plan, results);
}

/**
 * A note's text, or its omission when its attachment is over the response cap or gives no text (a scanned PDF,
 * a malformed RTF): asking again cannot help, and the draft says which notes it did not read.
 */
async function textOrOmission(
  read: () => Promise<string | undefined>,
  document: DocumentReference,
  omitted: RecordOmission[],
): Promise<string | undefined> {
  try {
    return await read();
  } catch (error) {
    if (error instanceof UnreadableNoteError) {
      omitted.push({ reference: `DocumentReference/${document.id}`, reason: error.reason });
      return undefined;
    }
    if (!(error instanceof ResponseTooLargeError)) throw error;
    omitted.push({ reference: `DocumentReference/${document.id}`, reason: 'too-large' });
    return undefined;
  }
}

/**
 * Every note's text: inline data decoded in place; notes behind attachment URLs fetched in one batch
 * when the server takes batches (otherwise in parallel within the limit), each Binary checked by the
 * compartment guard. A batch answer over the response cap falls back to one read per note, so only
 * the notes that are themselves too large are left out.
 */
async function noteTexts(
  reader: PatientScopedReader,
  documents: DocumentReference[],
  useBatch: boolean,
  options: HistoryOptions,
): Promise<{ texts: (string | undefined)[]; omitted: RecordOmission[] }> {
  const maxCharacters = options.maxNoteCharacters ?? defaultMaxNoteCharacters;
  const omitted: RecordOmission[] = [];
  const readAlone = (document: DocumentReference) =>
    textOrOmission(() => readNoteText(reader, document, maxCharacters), document, omitted);
  // Inline data is read in place (a PDF's text layer takes a moment, so within the same limit as fetches).
  const texts = await mapWithConcurrency(documents, options.concurrency ?? 4, (document) =>
    textAttachment(document)?.data ? readAlone(document) : Promise.resolve(undefined),
  );
  const remote = documents.flatMap((document, index) => {
    const attachment = textAttachment(document);
    return attachment?.url && !attachment.data ? [{ index, document, url: attachment.url }] : [];
  });
  const binaries =
    useBatch && remote.length > 1
      ? await reader.noteAttachments(remote).catch((error: unknown) => {
          if (error instanceof ResponseTooLargeError) return undefined;
          throw error;
        })
      : undefined;
  if (binaries) {
    for (const [position, { index, document }] of remote.entries()) {
      const binary = binaries[position];
      texts[index] =
        binary instanceof OperationOutcomeError
          ? await retryAlone(binary, () => readAlone(document))
          : await textOrOmission(() => binaryNoteText(document, binary, maxCharacters), document, omitted);
    }
    return { texts, omitted };
  }
  const fetched = await mapWithConcurrency(remote, options.concurrency ?? 4, ({ document }) =>
    readAlone(document),
  );
  remote.forEach(({ index }, position) => {
    texts[index] = fetched[position];
  });
  return { texts, omitted };
}

/**
 * Pages of a search made inside a batch. Some servers (the sandbox's engine among them) leave the `next`
 * link out of batch results; when the total says more matched than arrived, search again on its own,
 * which pages, rather than summarise a silently truncated record.
 */
async function collectOrSearchAgain(
  reader: PatientScopedReader,
  resourceType: FhirResource['resourceType'],
  firstPage: Bundle,
  options: HistoryOptions,
): Promise<FhirResource[]> {
  const collected = await reader.collectSearchPages(resourceType, firstPage);
  if (firstPage.total === undefined || collected.length >= firstPage.total) return collected;
  return reader.search(resourceType, searchParams(resourceType, options));
}

async function retryAlone<T>(error: OperationOutcomeError, again: () => Promise<T>): Promise<T> {
  // A throttled or failed entry may succeed on its own (with the client's retries); a 4xx will not.
  if (!error.isRetryable) throw error;
  return again();
}

/** The further types asked for, without the history lists' own types; an unknown type is a wiring mistake. */
function additionalTypesOf(options: HistoryOptions): string[] {
  const standard = new Set<string>(Object.values(searchesByList));
  const wanted = [...new Set(options.additionalTypes ?? [])].filter(
    (type) => !standard.has(type) && type !== 'Medication',
  );
  const unknown = wanted.filter((type) => !(additionalHistoryTypes as readonly string[]).includes(type));
  if (unknown.length > 0)
    throw outcomeError('not-supported', `history cannot load ${unknown.join(', ')} for a patient`, 500);
  return wanted;
}

function wantsMedications(options: HistoryOptions): boolean {
  return options.additionalTypes?.includes('Medication') ?? false;
}

/** The history of the reader's patient. Only the reader is used: nothing here can reach another patient. */
export async function retrievePatientHistory(
  reader: PatientScopedReader,
  encounter: Encounter,
  options: HistoryOptions,
): Promise<PatientRecord> {
  const admittedEncounter = reader.admit(encounter);
  const listNames = Object.keys(searchesByList) as (keyof PatientResourceLists)[];
  const plan: SearchPlan = { listNames, additionalTypes: additionalTypesOf(options) };
  const useBatch = options.batch !== 'never' && (await reader.supportsBatch());
  const { patient, lists, additional, unreadTypes } = useBatch
    ? await searchInOneBatch(reader, plan, options).catch((error: unknown) => {
        // The whole batch answer over the response cap: each search on its own may fit.
        if (error instanceof ResponseTooLargeError) return searchSeparately(reader, plan, options);
        throw error;
      })
    : await searchSeparately(reader, plan, options);

  const record = { patient, encounter: admittedEncounter, ...lists } as PatientRecord;
  if (wantsMedications(options)) {
    const { medications, refused } = await referencedMedications(
      reader,
      [...lists.medications, ...additional],
      options,
    );
    additional.push(...medications);
    if (refused !== undefined) unreadTypes.push({ resourceType: 'Medication', status: refused });
  }
  if (plan.additionalTypes.length > 0 || wantsMedications(options)) record.additional = additional;
  if (unreadTypes.length > 0) {
    record.unreadTypes = unreadTypes;
    options.logger?.warn({ encounterId: encounter.id, unreadTypes }, 'history-types-unread');
  }
  record.noteResources = record.noteResources.filter(
    (document) =>
      document.status !== 'entered-in-error' && !isOwnDraft(document, options.draftIdentifierSystem),
  );

  const { texts, omitted } = await noteTexts(reader, record.noteResources, useBatch, options);
  if (omitted.length > 0) {
    record.omitted = omitted;
    options.logger?.warn(
      {
        encounterId: encounter.id,
        omittedNotes: omitted.length,
        reason: [...new Set(omitted.map((omission) => omission.reason))].join(','),
      },
      'history-notes-omitted',
    );
  }
  const notes = record.noteResources.map((document, index): ClinicalNote | undefined => {
    const text = texts[index];
    if (text === undefined) return undefined;
    return {
      reference: `DocumentReference/${document.id}`,
      id: document.id as string,
      versionId: document.meta?.versionId,
      date: document.date ?? document.context?.period?.start,
      title: document.description ?? document.type?.text ?? document.type?.coding?.[0]?.display ?? 'Note',
      text,
    };
  });
  record.notes = notes
    .filter((note): note is ClinicalNote => note !== undefined)
    .sort((left, right) => (left.date ?? '').localeCompare(right.date ?? ''));
  return record;
}
