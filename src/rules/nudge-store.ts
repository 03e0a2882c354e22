/**
 * What the rules engine remembers between evaluations: which nudge was delivered to which patient
 * when (suppression windows) and what the clinician did with it (`rules stats`). A small port with
 * an in-memory implementation (tests, CLI) and a node:sqlite one (the service).
 */
export type NudgeOutcomeKind = 'accepted' | 'overridden' | 'ignored';

export interface NudgeDelivery {
  nudgeId: string;
  ruleId: string;
  ruleVersion: string;
  patientId: string;
  /** The encounter (or the day of a patient-view) the nudge was shown for. */
  occasionId: string;
  deliveredAt: Date;
  /** Fired by a rule in silent mode: counted, never shown (and never suppresses a shown one). */
  silent?: boolean;
}

export interface NudgeOutcome {
  nudgeId: string;
  outcome: NudgeOutcomeKind;
  /** Override reason (a code or words); only for `overridden`. */
  reason?: string;
  /** Where the outcome came from: `cds-hooks`, `review-app`. */
  source: string;
  recordedAt: Date;
}

export interface RuleStatistics {
  ruleId: string;
  ruleVersion: string;
  fired: number;
  accepted: number;
  overridden: number;
  ignored: number;
  /** Fired, with no outcome recorded yet. */
  noResponse: number;
  /** Fired while the rule was silent (not shown, so not in the other counts). */
  silent: number;
  overrideReasons: Record<string, number>;
}

/** The logic a rule version was first served with: one version, one logic (`rules stats` counts per version). */
export interface RuleLogic {
  ruleId: string;
  ruleVersion: string;
  logicFingerprint: string;
  firstServedAt: Date;
}

/** A clinician's "not now": this rule is not shown to this patient again before `until`. */
export interface NudgeSnooze {
  ruleId: string;
  patientId: string;
  until: Date;
  /** The card the clinician answered. */
  nudgeId: string;
  recordedAt: Date;
}

export interface NudgeStore {
  /** Idempotent on nudgeId: re-delivering the same nudge (a retried job, a re-served card) is one delivery. */
  recordDelivery(delivery: NudgeDelivery): Promise<void>;
  /** The latest delivery of a rule (any version) to a patient on another occasion than the given one. */
  lastDelivery(
    ruleId: string,
    patientId: string,
    excludingOccasionId?: string,
  ): Promise<NudgeDelivery | undefined>;
  findDelivery(nudgeId: string): Promise<NudgeDelivery | undefined>;
  /** Every nudge shown to a patient on one occasion (an encounter's draft): what the clinician was shown (silent ones are not). */
  deliveriesForOccasion(patientId: string, occasionId: string): Promise<NudgeDelivery[]>;
  /** The latest outcome for a nudge is the one that counts. */
  recordOutcome(outcome: NudgeOutcome): Promise<void>;
  statistics(): Promise<RuleStatistics[]>;
  recordSnooze(snooze: NudgeSnooze): Promise<void>;
  /** The end of the latest snooze of a rule for a patient still running at `at`, if any. */
  snoozedUntil(ruleId: string, patientId: string, at: Date): Promise<Date | undefined>;
  /** The recorded logic of these (id, version) pairs where it differs from the given fingerprint. */
  ruleLogicConflicts(rules: Omit<RuleLogic, 'firstServedAt'>[]): Promise<RuleLogic[]>;
  /** Records the logic of versions served for the first time; a version already recorded keeps its first. */
  recordRuleLogic(rules: RuleLogic[]): Promise<void>;
  close(): Promise<void>;
}

export class InMemoryNudgeStore implements NudgeStore {
  readonly #deliveries = new Map<string, NudgeDelivery>();
  readonly #outcomes = new Map<string, NudgeOutcome>();
  readonly #logic = new Map<string, RuleLogic>();
  readonly #snoozes: NudgeSnooze[] = [];

  async recordSnooze(snooze: NudgeSnooze): Promise<void> {
    this.#snoozes.push({ ...snooze });
  }

  async snoozedUntil(ruleId: string, patientId: string, at: Date): Promise<Date | undefined> {
    const running = this.#snoozes.filter(
      (snooze) =>
        snooze.ruleId === ruleId &&
        snooze.patientId === patientId &&
        snooze.recordedAt <= at &&
        snooze.until > at,
    );
    return running.length > 0
      ? new Date(Math.max(...running.map((snooze) => snooze.until.getTime())))
      : undefined;
  }

  async ruleLogicConflicts(rules: Omit<RuleLogic, 'firstServedAt'>[]): Promise<RuleLogic[]> {
    return rules.flatMap((rule) => {
      const recorded = this.#logic.get(`${rule.ruleId}\0${rule.ruleVersion}`);
      return recorded && recorded.logicFingerprint !== rule.logicFingerprint ? [recorded] : [];
    });
  }

  async recordRuleLogic(rules: RuleLogic[]): Promise<void> {
    for (const rule of rules) {
      const key = `${rule.ruleId}\0${rule.ruleVersion}`;
      if (!this.#logic.has(key)) this.#logic.set(key, { ...rule });
    }
  }

  async recordDelivery(delivery: NudgeDelivery): Promise<void> {
    if (!this.#deliveries.has(delivery.nudgeId)) this.#deliveries.set(delivery.nudgeId, { ...delivery });
  }

  async lastDelivery(ruleId: string, patientId: string, excludingOccasionId?: string) {
    let latest: NudgeDelivery | undefined;
    for (const delivery of this.#deliveries.values()) {
      if (delivery.ruleId !== ruleId || delivery.patientId !== patientId || delivery.silent) continue;
      if (excludingOccasionId !== undefined && delivery.occasionId === excludingOccasionId) continue;
      if (!latest || delivery.deliveredAt > latest.deliveredAt) latest = delivery;
    }
    return latest;
  }

  async findDelivery(nudgeId: string) {
    return this.#deliveries.get(nudgeId);
  }

  async deliveriesForOccasion(patientId: string, occasionId: string) {
    return [...this.#deliveries.values()].filter(
      (delivery) =>
        delivery.patientId === patientId && delivery.occasionId === occasionId && !delivery.silent,
    );
  }

  async recordOutcome(outcome: NudgeOutcome): Promise<void> {
    const existing = this.#outcomes.get(outcome.nudgeId);
    if (!existing || existing.recordedAt <= outcome.recordedAt)
      this.#outcomes.set(outcome.nudgeId, { ...outcome });
  }

  async statistics(): Promise<RuleStatistics[]> {
    return summarise(
      [...this.#deliveries.values()].map((delivery) => ({
        delivery,
        outcome: this.#outcomes.get(delivery.nudgeId),
      })),
    );
  }

  async close(): Promise<void> {}
}

/** Shared by both stores so the counting rules are written once. */
export function summarise(
  rows: { delivery: NudgeDelivery; outcome: NudgeOutcome | undefined }[],
): RuleStatistics[] {
  const byRule = new Map<string, RuleStatistics>();
  for (const { delivery, outcome } of rows) {
    const key = `${delivery.ruleId}\0${delivery.ruleVersion}`;
    const statistics = byRule.get(key) ?? {
      ruleId: delivery.ruleId,
      ruleVersion: delivery.ruleVersion,
      fired: 0,
      accepted: 0,
      overridden: 0,
      ignored: 0,
      noResponse: 0,
      silent: 0,
      overrideReasons: {},
    };
    byRule.set(key, statistics);
    if (delivery.silent) {
      statistics.silent += 1;
      continue;
    }
    statistics.fired += 1;
    if (!outcome) statistics.noResponse += 1;
    else if (outcome.outcome === 'accepted') statistics.accepted += 1;
    else if (outcome.outcome === 'ignored') statistics.ignored += 1;
    else {
      statistics.overridden += 1;
      const reason = outcome.reason?.trim() || 'no reason given';
      statistics.overrideReasons[reason] = (statistics.overrideReasons[reason] ?? 0) + 1;
    }
    byRule.set(key, statistics);
  }
  return [...byRule.values()].sort(
    (left, right) =>
      left.ruleId.localeCompare(right.ruleId) || left.ruleVersion.localeCompare(right.ruleVersion),
  );
}
