import type { AllergyIntolerance, Condition, MedicationRequest } from 'fhir/r4.js';
import {
  conceptText,
  isActiveCondition,
  isActiveMedication,
  medicationName,
} from '../../agents/record-text.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';

/**
 * The few lists of the record the interview uses: problems and medications to choose follow-up questions, and
 * (only where the site allows it, `patientIntake.showRecordLists`) medications and allergies for the patient to
 * confirm. Names only, each one inert line.
 */
export interface RecordLists {
  problems: string[];
  medications: string[];
  allergies: string[];
}

export async function readRecordLists(fhir: FhirClient, patientId: string): Promise<RecordLists> {
  const patient = `Patient/${patientId}`;
  const [conditions, medications, allergies] = await Promise.all([
    fhir.search<Condition>('Condition', { patient }),
    fhir.search<MedicationRequest>('MedicationRequest', { patient }),
    fhir.search<AllergyIntolerance>('AllergyIntolerance', { patient }),
  ]);
  const unique = (names: string[]) => [...new Set(names)].slice(0, 40);
  return {
    problems: unique(conditions.filter(isActiveCondition).map((condition) => conceptText(condition.code))),
    medications: unique(medications.filter(isActiveMedication).map(medicationName)),
    allergies: unique(
      allergies
        .filter((allergy) => allergy.clinicalStatus?.coding?.[0]?.code !== 'resolved')
        .map((allergy) => conceptText(allergy.code)),
    ),
  };
}
