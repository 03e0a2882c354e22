import type { Encounter, Patient } from 'fhir/r4.js';
import { fhirDateRange } from './record-as-of-visit.ts';

/**
 * Deceased patients (issue 19, item 4). A death is recorded as Patient.deceasedBoolean or
 * deceasedDateTime; nothing is drafted for an encounter after it, and no briefing prepares a visit
 * for a patient who has died.
 */
export function isDeceased(patient: Patient): boolean {
  return patient.deceasedBoolean === true || typeof patient.deceasedDateTime === 'string';
}

/**
 * True when the encounter cannot be shown to start before the patient's death: it starts after the last
 * instant the recorded death covers (a death recorded as a date covers that whole day, so a visit on the
 * day of death is still drafted), or the death has no usable date (deceasedBoolean, or a value that is not
 * a FHIR dateTime), or the encounter has no start. A living patient: false.
 */
export function encounterAfterDeath(patient: Patient, encounter: Encounter): boolean {
  if (!isDeceased(patient)) return false;
  const start = fhirDateRange(encounter.period?.start);
  const death = fhirDateRange(patient.deceasedDateTime);
  if (!start || !death) return true;
  return start.start > death.end;
}
