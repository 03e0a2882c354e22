import type { PatientRecord } from '../../fhir/patient-record.ts';
import { recordFromResources } from '../rules/record-from-bundle.ts';
import { patientIdFor } from '../sandbox/patient-profiles.ts';
import { generatePatient } from '../sandbox/synthetic-patients.ts';

/**
 * The sandbox's synthetic patients as a backtest population: each worker builds patient N itself
 * (see src/rules/backtest.ts), so records never cross threads. Kept out of src/rules: the rules
 * engine does not know the sandbox.
 */
export function populationRecord(
  index: number,
  now: Date,
  seed: number,
  options: { notes?: boolean } = {},
): PatientRecord {
  // Backtests leave notes out (rules do not read their text); `explain` keeps them, as the sandbox serves them.
  const patient = generatePatient(index, {
    count: index + 1,
    seed,
    now,
    ...(options.notes ? {} : { notesPerEncounter: 0 }),
  });
  return recordFromResources(patient.resources);
}

/**
 * The running sandbox's patient `sbx-NNNN`: the sandbox generates its patients once at start, with its
 * configured seed, relative to the start of that UTC day. Undefined for an id it does not have.
 */
export function sandboxPatientRecord(
  patientId: string,
  sandbox: { patients: number; seed: number },
  day: Date,
): PatientRecord | undefined {
  const index = Number(/^sbx-(\d+)$/.exec(patientId)?.[1] ?? Number.NaN);
  if (!Number.isInteger(index) || index >= sandbox.patients || patientIdFor(index) !== patientId)
    return undefined;
  const startOfDay = new Date(Date.UTC(day.getUTCFullYear(), day.getUTCMonth(), day.getUTCDate()));
  return populationRecord(index, startOfDay, sandbox.seed, { notes: true });
}

export { patientIdFor };

export const sandboxPopulationModule = new URL(import.meta.url).href;
