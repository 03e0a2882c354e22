import type { Encounter } from 'fhir/r4.js';
import { z } from 'zod';
import { isFhirId } from '../../fhir/fhir-id.ts';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import { patientIdInReference } from '../../fhir/patient-scope.ts';
import type { EventIntake } from './event-intake.ts';

/**
 * CDS Hooks `encounter-start` and `encounter-discharge` calls as events: the CDS Hooks service (owned by the
 * rules part) calls enqueueFromCdsHook with the hook name and its context. A hook is a hint like any other
 * event: the Encounter is read first and must belong to the patient in context (a caller cannot aim a draft
 * at another patient's visit), and the kind of draft follows the encounter's status and the configured
 * triggers when the job runs, not the hook's name. Other hooks are not events and are ignored.
 */
export const encounterHooks = new Set(['encounter-start', 'encounter-discharge']);

const fhirId = z.string().refine(isFhirId, 'is not a FHIR id');

const contextSchema = z.looseObject({
  patientId: fhirId,
  encounterId: fhirId,
  userId: z.string().optional(),
});

/** The patient id an Encounter's subject names, relative or absolute (`[base]/Patient/<id>`). */
function subjectPatientId(encounter: Encounter): string | undefined {
  return patientIdInReference(encounter.subject?.reference);
}

export async function enqueueFromCdsHook(
  intake: EventIntake,
  hook: string,
  context: unknown,
  readEncounter: (encounterId: string) => Promise<Encounter>,
): Promise<{ queued: number }> {
  if (!encounterHooks.has(hook)) return { queued: 0 };
  const parsed = contextSchema.safeParse(context);
  if (!parsed.success)
    throw outcomeError('invalid', `${hook} context needs patientId and encounterId (FHIR ids)`, 400);
  const { patientId, encounterId } = parsed.data;
  // The same answer whether the encounter is missing or another patient's: nothing about it is revealed.
  const notThisPatients = () =>
    outcomeError('invalid', `${hook}: context.encounterId is not an encounter of context.patientId`, 400);
  const encounter = await readEncounter(encounterId).catch((error: unknown) => {
    const status = (error as { status?: number }).status;
    if (status === 404 || status === 410) throw notThisPatients();
    throw error;
  });
  if (encounter.resourceType !== 'Encounter' || subjectPatientId(encounter) !== patientId)
    throw notThisPatients();
  const versionId = encounter.meta?.versionId;
  const queued = await intake.acceptEncounters(
    [{ encounterId, ...(versionId ? { versionId } : {}) }],
    'cds-hooks',
  );
  return { queued };
}
