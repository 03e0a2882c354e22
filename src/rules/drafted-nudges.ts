import type { SqlExecutor } from '../storage/sql-database.ts';
import type { Nudge, RuleEvaluation, VisitUrgency } from './evaluate.ts';

/**
 * The nudges the pipeline put into drafts, by encounter, so CDS Hooks can serve what was drafted
 * instead of evaluating again. In memory and bounded for one process (after a restart, or for an
 * encounter not drafted yet, CDS Hooks evaluates live within its time budget); in the shared
 * database with replicas (SqlDraftedNudges below).
 */
export interface DraftedNudgeSet {
  nudges: Nudge[];
  urgency?: VisitUrgency;
}

export class DraftedNudgeCache implements DraftedNudges {
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

/** What the pipeline and CDS Hooks need of the drafted nudges, wherever they are kept. */
export interface DraftedNudges {
  remember(patientId: string, encounterId: string, evaluation: RuleEvaluation): Promise<void> | void;
  find(query: {
    patientId: string;
    encounterId?: string;
  }): Promise<DraftedNudgeSet | undefined> | DraftedNudgeSet | undefined;
}

/**
 * The drafted nudges in the shared database, so CDS Hooks on any replica serves what a worker on
 * another one drafted. Bounded by age: entries older than `keepMs` go now and then.
 */
export class SqlDraftedNudges implements DraftedNudges {
  readonly #database: SqlExecutor;
  readonly #keepMs: number;
  readonly #now: () => number;
  #writesSincePrune = 0;

  constructor(database: SqlExecutor, options: { keepMs?: number; now?: () => number } = {}) {
    this.#database = database;
    this.#keepMs = options.keepMs ?? 7 * 24 * 60 * 60 * 1000;
    this.#now = options.now ?? Date.now;
  }

  async remember(patientId: string, encounterId: string, evaluation: RuleEvaluation): Promise<void> {
    const set: DraftedNudgeSet = {
      nudges: evaluation.nudges,
      ...(evaluation.urgency ? { urgency: evaluation.urgency } : {}),
    };
    await this.#database.run(
      `insert into drafted_nudges (encounter_id, patient_id, body, remembered_at) values (?, ?, ?, ?)
         on conflict (encounter_id) do update set patient_id = excluded.patient_id, body = excluded.body,
           remembered_at = excluded.remembered_at`,
      [encounterId, patientId, JSON.stringify(set), this.#now()],
    );
    this.#writesSincePrune += 1;
    if (this.#writesSincePrune >= 100) {
      this.#writesSincePrune = 0;
      await this.#database.run('delete from drafted_nudges where remembered_at < ?', [
        this.#now() - this.#keepMs,
      ]);
    }
  }

  async find(query: { patientId: string; encounterId?: string }): Promise<DraftedNudgeSet | undefined> {
    // Drafted for another patient's encounter: never served.
    const [row] = query.encounterId
      ? await this.#database.all<{ body: string }>(
          'select body from drafted_nudges where encounter_id = ? and patient_id = ?',
          [query.encounterId, query.patientId],
        )
      : await this.#database.all<{ body: string }>(
          'select body from drafted_nudges where patient_id = ? order by remembered_at desc limit 1',
          [query.patientId],
        );
    return row ? (JSON.parse(row.body) as DraftedNudgeSet) : undefined;
  }
}
