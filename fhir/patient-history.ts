import type { DocumentReference, Encounter, FhirResource, Patient } from 'fhir/r4.js';
import type { FhirClient } from './fhir-client.ts';
import { readNoteText } from './note-text.ts';
import { outcomeError } from './operation-outcome.ts';
import type { ClinicalNote, PatientRecord, PatientResourceLists } from './patient-record.ts';

/**
 * Retrieves one patient's history for one event: per-type searches in parallel, notes decoded,
 * every resource checked to belong to the event's patient (the compartment guard), and the
 * service's own drafts left out so a summary never summarises an earlier summary.
 */
export interface HistoryOptions {
  /** Identifier system of the drafts this service writes. */
  draftIdentifierSystem: string;
  /** How many searches or note reads run at once. */
  concurrency?: number;
  pageSize?: number;
}

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

/** Runs tasks with at most `limit` in flight, keeping their order. */
export async function mapWithConcurrency<T, R>(
  items: T[],
  limit: number,
  task: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const index = next++;
      results[index] = await task(items[index]);
    }
  });
  await Promise.all(workers);
  return results;
}

/** The patient a resource belongs to, as `Patient/<id>`, from its subject or patient reference. */
export function patientReferenceOf(resource: FhirResource): string | undefined {
  if (resource.resourceType === 'Patient') return `Patient/${resource.id}`;
  const holder = resource as { subject?: { reference?: string }; patient?: { reference?: string } };
  const reference = holder.subject?.reference ?? holder.patient?.reference;
  if (!reference) return undefined;
  // Absolute references name the same patient when their last two segments do.
  const match = /(?:^|\/)(Patient\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/.exec(reference);
  return match?.[1];
}

export function assertInCompartment(resource: FhirResource, patientId: string): void {
  if (patientReferenceOf(resource) !== `Patient/${patientId}`) {
    throw outcomeError(
      'forbidden',
      `${resource.resourceType}/${resource.id} does not belong to the event's patient; refused`,
      403,
    );
  }
}

export function isOwnDraft(document: DocumentReference, draftIdentifierSystem: string): boolean {
  return (document.identifier ?? []).some((identifier) => identifier.system === draftIdentifierSystem);
}

export async function retrievePatientRecord(
  client: FhirClient,
  encounter: Encounter,
  options: HistoryOptions,
): Promise<PatientRecord> {
  const patientId = /^Patient\/([A-Za-z0-9\-.]{1,64})$/.exec(patientReferenceOf(encounter) ?? '')?.[1];
  if (!patientId) throw outcomeError('invalid', `Encounter/${encounter.id} has no patient subject`, 422);
  const concurrency = options.concurrency ?? 4;
  const patientParam = `Patient/${patientId}`;
  const count = options.pageSize ?? 200;

  const listNames = Object.keys(searchesByList) as (keyof PatientResourceLists)[];
  const [patient, ...lists] = await mapWithConcurrency<string, FhirResource | FhirResource[]>(
    ['Patient', ...listNames],
    concurrency,
    (name) =>
      name === 'Patient'
        ? client.read<Patient>('Patient', patientId)
        : client.search(searchesByList[name as keyof PatientResourceLists], {
            patient: patientParam,
            _count: count,
          }),
  );

  const record = { patient: patient as Patient, encounter } as PatientRecord;
  listNames.forEach((name, index) => {
    const resources = lists[index] as FhirResource[];
    for (const resource of resources) assertInCompartment(resource, patientId);
    (record as unknown as Record<string, FhirResource[]>)[name] = resources;
  });
  assertInCompartment(record.patient, patientId);
  record.noteResources = record.noteResources.filter(
    (document) =>
      document.status !== 'entered-in-error' && !isOwnDraft(document, options.draftIdentifierSystem),
  );

  const notes = await mapWithConcurrency(
    record.noteResources,
    concurrency,
    async (document): Promise<ClinicalNote | undefined> => {
      const text = await readNoteText(client, document);
      if (text === undefined) return undefined;
      return {
        reference: `DocumentReference/${document.id}`,
        id: document.id as string,
        versionId: document.meta?.versionId,
        date: document.date ?? document.context?.period?.start,
        title: document.description ?? document.type?.text ?? document.type?.coding?.[0]?.display ?? 'Note',
        text,
      };
    },
  );
  record.notes = notes
    .filter((note): note is ClinicalNote => note !== undefined)
    .sort((left, right) => (left.date ?? '').localeCompare(right.date ?? ''));
  return record;
}
