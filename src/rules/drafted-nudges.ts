import type { Nudge, RuleEvaluation, VisitUrgency } from './evaluate.ts';

/**
 * The nudges the pipeline put into drafts, by encounter, so CDS Hooks can serve what was drafted
 * instead of evaluating again. Bounded and in memory: after a restart, or for an encounter not
 * drafted yet, CDS Hooks evaluates live within its time budget.
 */
export interface DraftedNudgeSet {
  nudges: Nudge[];
  urgency?: VisitUrgency;
}

export class DraftedNudgeCache {
  readonly #byEncounter = new Map<string, DraftedNudgeSet & { patientId: string }>();
  readonly #latestEncounterOfPatient = new Map<string, string>();
  readonly #capacity: number;

  constructor(capacity = 5_000) {
    this.#capacity = capacity;
  }

  remember(patientId: string, encounterId: string, evaluation: RuleEvaluation): void {
    // Re-inserting moves the entry to the end: the oldest entries are the first evicted.
    this.#byEncounter.delete(encounterId);
    this.#byEncounter.set(encounterId, {
      patientId,
      nudges: evaluation.nudges,
      ...(evaluation.urgency ? { urgency: evaluation.urgency } : {}),
    });
    this.#latestEncounterOfPatient.delete(patientId);
    this.#latestEncounterOfPatient.set(patientId, encounterId);
    for (const map of [this.#byEncounter, this.#latestEncounterOfPatient] as Map<string, unknown>[]) {
      while (map.size > this.#capacity) map.delete(map.keys().next().value as string);
    }
  }

  find(query: { patientId: string; encounterId?: string }): DraftedNudgeSet | undefined {
    const encounterId = query.encounterId ?? this.#latestEncounterOfPatient.get(query.patientId);
    const drafted = encounterId ? this.#byEncounter.get(encounterId) : undefined;
    // Drafted for another patient's encounter: never served.
    if (!drafted || drafted.patientId !== query.patientId) return undefined;
    return { nudges: drafted.nudges, ...(drafted.urgency ? { urgency: drafted.urgency } : {}) };
  }
}
