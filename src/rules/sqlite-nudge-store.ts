import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { SqlDatabase, SqlValue } from '../storage/sql-database.ts';
import { SqliteDatabase } from '../storage/sqlite-database.ts';
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
 * Nudge deliveries and outcomes in SQL: a SQLite file (node:sqlite, one process) or the shared
 * PostgreSQL, so suppression and `rules stats` are the same from every replica. Timestamps are
 * stored as epoch milliseconds so window queries compare numbers.
 */
const sqliteSchema = `
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
`;

type Row = Record<string, SqlValue>;

export class SqlNudgeStore implements NudgeStore {
  readonly #database: SqlDatabase;
  readonly #ownsDatabase: boolean;

  constructor(database: SqlDatabase, options: { ownsDatabase?: boolean } = {}) {
    this.#database = database;
    this.#ownsDatabase = options.ownsDatabase ?? false;
  }

  async recordSnooze(snooze: NudgeSnooze): Promise<void> {
    await this.#database.run(
      `INSERT INTO nudge_snooze (nudge_id, rule_id, patient_id, until, recorded_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT DO NOTHING`,
      [snooze.nudgeId, snooze.ruleId, snooze.patientId, snooze.until.getTime(), snooze.recordedAt.getTime()],
    );
  }

  async snoozedUntil(ruleId: string, patientId: string, at: Date): Promise<Date | undefined> {
    const [row] = await this.#database.all<Row>(
      `SELECT MAX(until) AS until FROM nudge_snooze
       WHERE rule_id = ? AND patient_id = ? AND recorded_at <= ? AND until > ?`,
      [ruleId, patientId, at.getTime(), at.getTime()],
    );
    return row?.until === null || row?.until === undefined ? undefined : new Date(Number(row.until));
  }

  async ruleLogicConflicts(rules: Omit<RuleLogic, 'firstServedAt'>[]): Promise<RuleLogic[]> {
    const conflicts: RuleLogic[] = [];
    for (const rule of rules) {
      const [row] = await this.#database.all<Row>(
        'SELECT * FROM rule_logic WHERE rule_id = ? AND rule_version = ? AND logic_fingerprint <> ?',
        [rule.ruleId, rule.ruleVersion, rule.logicFingerprint],
      );
      if (row)
        conflicts.push({
          ruleId: String(row.rule_id),
          ruleVersion: String(row.rule_version),
          logicFingerprint: String(row.logic_fingerprint),
          firstServedAt: new Date(Number(row.first_served_at)),
        });
    }
    return conflicts;
  }

  async recordRuleLogic(rules: RuleLogic[]): Promise<void> {
    for (const rule of rules)
      await this.#database.run(
        `INSERT INTO rule_logic (rule_id, rule_version, logic_fingerprint, first_served_at)
         VALUES (?, ?, ?, ?) ON CONFLICT DO NOTHING`,
        [rule.ruleId, rule.ruleVersion, rule.logicFingerprint, rule.firstServedAt.getTime()],
      );
  }

  async recordDelivery(delivery: NudgeDelivery): Promise<void> {
    await this.#database.transaction(async (transaction) => {
      await transaction.run(
        `INSERT INTO nudge_delivery (nudge_id, rule_id, rule_version, patient_id, occasion_id, delivered_at)
         VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING`,
        [
          delivery.nudgeId,
          delivery.ruleId,
          delivery.ruleVersion,
          delivery.patientId,
          delivery.occasionId,
          delivery.deliveredAt.getTime(),
        ],
      );
      // Kept beside the delivery table so stores written before silent mode need no migration.
      if (delivery.silent)
        await transaction.run(
          'INSERT INTO nudge_delivery_mode (nudge_id, silent) VALUES (?, 1) ON CONFLICT DO NOTHING',
          [delivery.nudgeId],
        );
    });
  }

  async lastDelivery(ruleId: string, patientId: string, excludingOccasionId?: string) {
    const [row] = await this.#database.all<Row>(
      `SELECT * FROM nudge_delivery d WHERE rule_id = ? AND patient_id = ? AND occasion_id <> ?
         AND NOT EXISTS (SELECT 1 FROM nudge_delivery_mode m WHERE m.nudge_id = d.nudge_id AND m.silent = 1)
       ORDER BY delivered_at DESC LIMIT 1`,
      // PostgreSQL text cannot hold NUL: an occasion id no FHIR id can be stands for "none excluded".
      [ruleId, patientId, excludingOccasionId ?? ' '],
    );
    return row ? deliveryFromRow(row) : undefined;
  }

  async findDelivery(nudgeId: string) {
    const [row] = await this.#database.all<Row>(
      `SELECT d.*, m.silent FROM nudge_delivery d LEFT JOIN nudge_delivery_mode m ON m.nudge_id = d.nudge_id
       WHERE d.nudge_id = ?`,
      [nudgeId],
    );
    return row ? deliveryFromRow(row) : undefined;
  }

  async deliveriesForOccasion(patientId: string, occasionId: string) {
    return (
      await this.#database.all<Row>(
        `SELECT * FROM nudge_delivery d WHERE patient_id = ? AND occasion_id = ?
           AND NOT EXISTS (SELECT 1 FROM nudge_delivery_mode m WHERE m.nudge_id = d.nudge_id AND m.silent = 1)`,
        [patientId, occasionId],
      )
    ).map(deliveryFromRow);
  }

  async recordOutcome(outcome: NudgeOutcome): Promise<void> {
    await this.#database.run(
      `INSERT INTO nudge_outcome (nudge_id, outcome, reason, source, recorded_at) VALUES (?, ?, ?, ?, ?)
       ON CONFLICT (nudge_id) DO UPDATE SET outcome = excluded.outcome, reason = excluded.reason,
         source = excluded.source, recorded_at = excluded.recorded_at
       WHERE excluded.recorded_at >= nudge_outcome.recorded_at`,
      [
        outcome.nudgeId,
        outcome.outcome,
        outcome.reason ?? null,
        outcome.source,
        outcome.recordedAt.getTime(),
      ],
    );
  }

  async statistics(): Promise<RuleStatistics[]> {
    const rows = await this.#database.all<Row>(
      `SELECT d.*, o.outcome, o.reason, o.source, o.recorded_at, m.silent FROM nudge_delivery d
       LEFT JOIN nudge_outcome o ON o.nudge_id = d.nudge_id
       LEFT JOIN nudge_delivery_mode m ON m.nudge_id = d.nudge_id`,
    );
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
    if (this.#ownsDatabase) await this.#database.close();
  }
}

/** The embedded store: one SQLite file (the service's `<dataDir>/rules.sqlite`, or `rules.storeFile`). */
export class SqliteNudgeStore extends SqlNudgeStore {
  constructor(file: string) {
    if (file !== ':memory:') mkdirSync(path.dirname(path.resolve(file)), { recursive: true });
    super(new SqliteDatabase(file, sqliteSchema), { ownsDatabase: true });
  }
}

function deliveryFromRow(row: Row): NudgeDelivery {
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
