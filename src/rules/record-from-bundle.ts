import type { Bundle, Encounter, FhirResource, Patient } from 'fhir/r4.js';
import { historyResourceTypes, type PatientRecord } from '../../fhir/patient-record.ts';

const standardTypes = new Set<string>(historyResourceTypes);

/**
 * A PatientRecord from a FHIR Bundle of one patient's resources: how rule fixtures, CDS Hooks
 * prefetch and backtests over exported data become what the engine reads. The record's encounter is
 * the one named, else the first planned or in-progress one, else the latest.
 */
export function recordFromResources(resources: FhirResource[], encounterId?: string): PatientRecord {
  const patient = resources.find((resource): resource is Patient => resource.resourceType === 'Patient');
  if (!patient) throw new Error('the bundle has no Patient');
  const ofType = <T extends FhirResource>(type: T['resourceType']) =>
    resources.filter((resource): resource is T => resource.resourceType === type);
  const encounters = ofType<Encounter>('Encounter');
  const encounter =
    (encounterId ? encounters.find((candidate) => candidate.id === encounterId) : undefined) ??
    encounters.find((candidate) => candidate.status === 'planned' || candidate.status === 'in-progress') ??
    [...encounters].sort((left, right) =>
      (right.period?.start ?? '').localeCompare(left.period?.start ?? ''),
    )[0] ??
    ({
      resourceType: 'Encounter',
      id: `none-${patient.id}`,
      status: 'unknown',
      class: { code: 'AMB' },
    } as Encounter);
  return {
    patient,
    encounter,
    conditions: ofType('Condition'),
    medications: ofType('MedicationRequest'),
    allergies: ofType('AllergyIntolerance'),
    observations: ofType('Observation'),
    encounters,
    procedures: ofType('Procedure'),
    immunizations: ofType('Immunization'),
    noteResources: ofType('DocumentReference'),
    notes: [],
    // Every other type (MedicationStatement, ServiceRequest...) stays: CQL rules may read it.
    additional: resources.filter(
      (resource) => resource.resourceType !== 'Patient' && !standardTypes.has(resource.resourceType),
    ),
  };
}

export function recordFromBundle(bundle: Bundle, encounterId?: string): PatientRecord {
  const resources = (bundle.entry ?? [])
    .map((entry) => entry.resource)
    .filter((resource): resource is FhirResource => resource !== undefined);
  return recordFromResources(resources, encounterId);
}
