import { mkdirSync } from 'node:fs';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import {
  type NudgeDelivery,
  type NudgeOutcome,
  type NudgeOutcomeKind,
  type NudgeSnooze,
  type NudgeStore,
  type RuleLogic,
  type RuleStatistics,
  summarise,
} from './nudge-store.ts';

/**
 * Nudge deliveries and outcomes in a SQLite file (node:sqlite, no native addon). Timestamps are
 * stored as epoch milliseconds so window queries compare numbers.
 */
export class SqliteNudgeStore implements NudgeStore {
  readonly #database: DatabaseSync;

  constructor(file: string) {
    if (file !== ':memory:') mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    this.#database = new DatabaseSync(file);
    this.#database.exec(`
      PRAGMA journal_mode = WAL;
      PRAGMA busy_timeout = 5000;
      CREATE TABLE IF NOT EXISTS nudge_delivery (
        nudge_id TEXT PRIMARY KEY,
        rule_id TEXT NOT NULL,
        rule_version TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        occasion_id TEXT NOT NULL,
        delivered_at INTEGER NOT NULL
      );
      CREATE INDEX IF NOT EXISTS nudge_delivery_rule_patient ON nudge_delivery (rule_id, patient_id, delivered_at);
      CREATE TABLE IF NOT EXISTS nudge_outcome (
        nudge_id TEXT PRIMARY KEY,
        outcome TEXT NOT NULL,
        reason TEXT,
        source TEXT NOT NULL,
        recorded_at INTEGER NOT NULL
      );
      CREATE TABLE IF NOT EXISTS nudge_delivery_mode (
        nudge_id TEXT PRIMARY KEY,
        silent INTEGER NOT NULL
      );
      CREATE TABLE IF NOT EXISTS nudge_snooze (
        nudge_id TEXT NOT NULL,
        rule_id TEXT NOT NULL,
        patient_id TEXT NOT NULL,
        until INTEGER NOT NULL,
        recorded_at INTEGER NOT NULL,
        PRIMARY KEY (nudge_id, until)
      );
      CREATE INDEX IF NOT EXISTS nudge_snooze_rule_patient ON nudge_snooze (rule_id, patient_id, until);
      CREATE TABLE IF NOT EXISTS rule_logic (
        rule_id TEXT NOT NULL,
        rule_version TEXT NOT NULL,
        logic_fingerprint TEXT NOT NULL,
        first_served_at INTEGER NOT NULL,
        PRIMARY KEY (rule_id, rule_version)
      );
    `);
  }

  async recordSnooze(snooze: NudgeSnooze): Promise<void> {
    this.#database
      .prepare(
        `INSERT OR IGNORE INTO nudge_snooze (nudge_id, rule_id, patient_id, until, recorded_at) VALUES (?, ?, ?, ?, ?)`,
      )
      .run(
        snooze.nudgeId,
        snooze.ruleId,
        snooze.patientId,
        snooze.until.getTime(),
        snooze.recordedAt.getTime(),
      );
  }

  async snoozedUntil(ruleId: string, patientId: string, at: Date): Promise<Date | undefined> {
    const row = this.#database
      .prepare(
        `SELECT MAX(until) AS until FROM nudge_snooze
         WHERE rule_id = ? AND patient_id = ? AND recorded_at <= ? AND until > ?`,
      )
      .get(ruleId, patientId, at.getTime(), at.getTime());
    return row?.until === null || row?.until === undefined ? undefined : new Date(Number(row.until));
  }

  async ruleLogicConflicts(rules: Omit<RuleLogic, 'firstServedAt'>[]): Promise<RuleLogic[]> {
    const select = this.#database.prepare(
      'SELECT * FROM rule_logic WHERE rule_id = ? AND rule_version = ? AND logic_fingerprint <> ?',
    );
    return rules.flatMap((rule) => {
      const row = select.get(rule.ruleId, rule.ruleVersion, rule.logicFingerprint);
      return row
        ? [
            {
              ruleId: String(row.rule_id),
              ruleVersion: String(row.rule_version),
              logicFingerprint: String(row.logic_fingerprint),
              firstServedAt: new Date(Number(row.first_served_at)),
            },
          ]
        : [];
    });
  }

  async recordRuleLogic(rules: RuleLogic[]): Promise<void> {
    const insert = this.#database.prepare(
      `INSERT OR IGNORE INTO rule_logic (rule_id, rule_version, logic_fingerprint, first_served_at)
       VALUES (?, ?, ?, ?)`,
    );
    for (const rule of rules)
      insert.run(rule.ruleId, rule.ruleVersion, rule.logicFingerprint, rule.firstServedAt.getTime());
  }

  async recordDelivery(delivery: NudgeDelivery): Promise<void> {
    this.#database
      .prepare(
        `INSERT OR IGNORE INTO nudge_delivery (nudge_id, rule_id, rule_version, patient_id, occasion_id, delivered_at)
         VALUES (?, ?, ?, ?, ?, ?)`,
      )
      .run(
        delivery.nudgeId,
        delivery.ruleId,
        delivery.ruleVersion,
        delivery.patientId,
        delivery.occasionId,
        delivery.deliveredAt.getTime(),
      );
    // Kept beside the delivery table so stores written before silent mode need no migration.
    if (delivery.silent)
      this.#database
        .prepare('INSERT OR IGNORE INTO nudge_delivery_mode (nudge_id, silent) VALUES (?, 1)')
        .run(delivery.nudgeId);
  }

  async lastDelivery(ruleId: string, patientId: string, excludingOccasionId?: string) {
    const row = this.#database
      .prepare(
        `SELECT * FROM nudge_delivery d WHERE rule_id = ? AND patient_id = ? AND occasion_id <> ?
           AND NOT EXISTS (SELECT 1 FROM nudge_delivery_mode m WHERE m.nudge_id = d.nudge_id AND m.silent = 1)
         ORDER BY delivered_at DESC LIMIT 1`,
      )
      .get(ruleId, patientId, excludingOccasionId ?? '\0');
    return row ? deliveryFromRow(row) : undefined;
  }

  async findDelivery(nudgeId: string) {
    const row = this.#database
      .prepare(
        `SELECT d.*, m.silent FROM nudge_delivery d LEFT JOIN nudge_delivery_mode m ON m.nudge_id = d.nudge_id
         WHERE d.nudge_id = ?`,
      )
      .get(nudgeId);
    return row ? deliveryFromRow(row) : undefined;
  }

  async deliveriesForOccasion(patientId: string, occasionId: string) {
    return this.#database
      .prepare(
        `SELECT * FROM nudge_delivery d WHERE patient_id = ? AND occasion_id = ?
           AND NOT EXISTS (SELECT 1 FROM nudge_delivery_mode m WHERE m.nudge_id = d.nudge_id AND m.silent = 1)`,
      )
      .all(patientId, occasionId)
      .map(deliveryFromRow);
  }

  async recordOutcome(outcome: NudgeOutcome): Promise<void> {
    this.#database
      .prepare(
        `INSERT INTO nudge_outcome (nudge_id, outcome, reason, source, recorded_at) VALUES (?, ?, ?, ?, ?)
         ON CONFLICT (nudge_id) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason,
           source = excluded.source, recorded_at = excluded.recorded_at
         WHERE excluded.recorded_at >= nudge_outcome.recorded_at`,
      )
      .run(
        outcome.nudgeId,
        outcome.outcome,
        outcome.reason ?? null,
        outcome.source,
        outcome.recordedAt.getTime(),
      );
  }

  async statistics(): Promise<RuleStatistics[]> {
    const rows = this.#database
      .prepare(
        `SELECT d.*, o.outcome, o.reason, o.source, o.recorded_at, m.silent FROM nudge_delivery d
         LEFT JOIN nudge_outcome o ON o.nudge_id = d.nudge_id
         LEFT JOIN nudge_delivery_mode m ON m.nudge_id = d.nudge_id`,
      )
      .all();
    return summarise(
      rows.map((row) => ({
        delivery: deliveryFromRow(row),
        outcome:
          row.outcome === null || row.outcome === undefined
            ? undefined
            : {
                nudgeId: String(row.nudge_id),
                outcome: row.outcome as NudgeOutcomeKind,
                reason: row.reason === null ? undefined : String(row.reason),
                source: String(row.source),
                recordedAt: new Date(Number(row.recorded_at)),
              },
      })),
    );
  }

  async close(): Promise<void> {
    if (this.#database.isOpen) this.#database.close();
  }
}

function deliveryFromRow(row: Record<string, unknown>): NudgeDelivery {
  return {
    ...(Number(row.silent) === 1 ? { silent: true } : {}),
    nudgeId: String(row.nudge_id),
    ruleId: String(row.rule_id),
    ruleVersion: String(row.rule_version),
    patientId: String(row.patient_id),
    occasionId: String(row.occasion_id),
    deliveredAt: new Date(Number(row.delivered_at)),
  };
}
