import { z } from 'zod';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import type { DraftKindHint } from '../queue/job-queue.ts';
import type { EventIntake } from './event-intake.ts';

/**
 * CDS Hooks `encounter-start` and `encounter-discharge` calls as events: the CDS Hooks service (owned
 * by the rules part) calls enqueueFromCdsHook with the hook name and its context; the encounter is
 * queued with the kind of draft the hook implies. Other hooks are not events and are ignored.
 */
export const encounterHookKinds: Record<string, DraftKindHint> = {
  'encounter-start': 'previsit-briefing',
  'encounter-discharge': 'progress-summary',
};

const contextSchema = z.looseObject({
  patientId: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/),
  encounterId: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/),
  userId: z.string().optional(),
});

export async function enqueueFromCdsHook(
  intake: EventIntake,
  hook: string,
  context: unknown,
): Promise<{ queued: number; kind: DraftKindHint | undefined }> {
  const kind = encounterHookKinds[hook];
  if (!kind) return { queued: 0, kind: undefined };
  const parsed = contextSchema.safeParse(context);
  if (!parsed.success)
    throw outcomeError('invalid', `${hook} context needs patientId and encounterId (FHIR ids)`, 400);
  const queued = await intake.acceptEncounters([{ encounterId: parsed.data.encounterId, kind }], 'cds-hooks');
  return { queued, kind };
}
