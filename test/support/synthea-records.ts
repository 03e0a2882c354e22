import path from 'node:path';
import type {
  AllergyIntolerance,
  Condition,
  DocumentReference,
  Encounter,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Patient,
  Procedure,
} from 'fhir/r4.js';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { readNdjsonFolder } from '../../src/sandbox/load-ndjson.ts';

/**
 * The shared Synthea patients (../shared/fixtures/synthea-r4) as PatientRecords, the way retrieval builds them, without
 * a FHIR server: each patient's resources, their notes decoded, drafted for their latest finished encounter.
 */
export interface SyntheaPatient {
  id: string;
  patient: Patient;
  /** The patient's own resources (the Patient itself not included). */
  resources: FhirResource[];
  /** The record for one of the patient's encounters (default: the latest finished one). */
  recordFor(encounter?: Encounter): PatientRecord;
  encounters: Encounter[];
}

const ownerOf = (resource: FhirResource) =>
  (resource as { subject?: { reference?: string }; patient?: { reference?: string } }).subject?.reference ??
  (resource as { patient?: { reference?: string } }).patient?.reference;

export async function loadSyntheaPatients(sharedFixtures: string): Promise<SyntheaPatient[]> {
  const resources = await readNdjsonFolder(path.join(sharedFixtures, 'synthea-r4'));
  const patients = resources.filter((resource): resource is Patient => resource.resourceType === 'Patient');
  return patients.map((patient) => {
    const own = resources.filter((resource) => ownerOf(resource) === `Patient/${patient.id}`);
    const ofType = <Resource extends FhirResource>(type: Resource['resourceType']) =>
      own.filter((resource): resource is Resource => resource.resourceType === type);
    const encounters = ofType<Encounter>('Encounter');
    const noteResources = ofType<DocumentReference>('DocumentReference');
    const latestFinished = encounters
      .filter((encounter) => encounter.status === 'finished')
      .sort((left, right) => (right.period?.start ?? '').localeCompare(left.period?.start ?? ''))[0];
    return {
      id: patient.id as string,
      patient,
      resources: own,
      encounters,
      recordFor: (encounter = latestFinished) => ({
        patient,
        encounter,
        conditions: ofType<Condition>('Condition'),
        medications: ofType<MedicationRequest>('MedicationRequest'),
        allergies: ofType<AllergyIntolerance>('AllergyIntolerance'),
        observations: ofType<Observation>('Observation'),
        encounters,
        procedures: ofType<Procedure>('Procedure'),
        immunizations: ofType<Immunization>('Immunization'),
        noteResources,
        notes: noteResources.map((document) => ({
          reference: `DocumentReference/${document.id}`,
          id: document.id as string,
          versionId: document.meta?.versionId,
          date: document.date,
          title: document.type?.coding?.[0]?.display ?? 'Note',
          text: decodeBase64Text(
            document.content[0].attachment.data ?? '',
            document.content[0].attachment.contentType,
          ),
        })),
      }),
    };
  });
}
