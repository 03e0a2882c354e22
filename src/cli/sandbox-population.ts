import type { PatientRecord } from '../../fhir/patient-record.ts';
import { recordFromResources } from '../rules/record-from-bundle.ts';
import { generatePatient } from '../sandbox/synthetic-patients.ts';

/**
 * The sandbox's synthetic patients as a backtest population: each worker builds patient N itself
 * (see src/rules/backtest.ts), so records never cross threads. Kept out of src/rules: the rules
 * engine does not know the sandbox.
 */
export function populationRecord(index: number, now: Date, seed: number): PatientRecord {
  const patient = generatePatient(index, { count: index + 1, seed, now, notesPerEncounter: 0 });
  return recordFromResources(patient.resources);
}

export const sandboxPopulationModule = new URL(import.meta.url).href;
