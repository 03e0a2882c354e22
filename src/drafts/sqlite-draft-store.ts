import type { RecordChange } from '../../fhir/draft-refresh.ts';
import type { DraftStore, RegenerationRequest, StoredDraft } from '../../fhir/draft-store.ts';
import type { SqlDatabase } from '../storage/sql-database.ts';
import { SqliteDatabase } from '../storage/sqlite-database.ts';
import { ensurePrivateFile } from './private-files.ts';

/**
 * The service's own draft store, in SQL: one SQLite file in the private data directory (one
 * process), or the shared PostgreSQL (replicas; its tables come from src/storage/migrations.ts).
 * Each draft is kept whole as JSON (the FHIR resources it would be) with the columns the lookups need
 * beside it.
 */
const sqliteSchema = `
create table if not exists drafts (
  id text primary key,
  identifier_value text not null unique,
  patient_id text not null,
  encounter_id text not null,
  kind text not null,
  updated_at text not null,
  body text not null
);
create index if not exists drafts_patient on drafts (patient_id);
create index if not exists drafts_updated on drafts (updated_at);
create table if not exists regenerations (
  encounter_id text not null,
  kind text not null,
  body text not null,
  requested_at text not null,
  primary key (encounter_id, kind)
);
create table if not exists generations (
  encounter_id text not null,
  kind text not null,
  generation integer not null,
  updated_at text not null,
  primary key (encounter_id, kind)
);
create table if not exists record_changes (
  draft_id text primary key,
  body text not null,
  updated_at text not null
);
`;

interface BodyRow {
  body: string;
}

export class SqlDraftStore implements DraftStore {
  readonly #database: SqlDatabase;
  /** Whether close() closes the database too (a store that opened its own file). */
  readonly #ownsDatabase: boolean;

  constructor(database: SqlDatabase, options: { ownsDatabase?: boolean } = {}) {
    this.#database = database;
    this.#ownsDatabase = options.ownsDatabase ?? false;
  }

  async #bodies(sql: string, ...parameters: string[]): Promise<StoredDraft[]> {
    return (await this.#database.all<BodyRow>(sql, parameters)).map(
      (row) => JSON.parse(row.body) as StoredDraft,
    );
  }

  async insert(draft: StoredDraft): Promise<void> {
    await this.#database.run(
      'insert into drafts (id, identifier_value, patient_id, encounter_id, kind, updated_at, body) values (?, ?, ?, ?, ?, ?, ?)',
      [
        draft.id,
        draft.identifierValue,
        draft.patientId,
        draft.encounterId,
        draft.kind,
        draft.updatedAt,
        JSON.stringify(draft),
      ],
    );
  }

  async get(id: string): Promise<StoredDraft | undefined> {
    return (await this.#bodies('select body from drafts where id = ?', id))[0];
  }

  async findByIdentifier(identifierValue: string): Promise<StoredDraft | undefined> {
    return (await this.#bodies('select body from drafts where identifier_value = ?', identifierValue))[0];
  }

  async listByPatient(patientId: string): Promise<StoredDraft[]> {
    return this.#bodies('select body from drafts where patient_id = ? order by updated_at desc', patientId);
  }

  async replace(draft: StoredDraft, expectedUpdatedAt: string): Promise<boolean> {
    const changed = await this.#database.run(
      'update drafts set updated_at = ?, body = ? where id = ? and updated_at = ?',
      [draft.updatedAt, JSON.stringify(draft), draft.id, expectedUpdatedAt],
    );
    return changed === 1;
  }

  async requestRegeneration(request: RegenerationRequest): Promise<void> {
    await this.#database.run(
      `insert into regenerations (encounter_id, kind, body, requested_at) values (?, ?, ?, ?)
         on conflict (encounter_id, kind) do update set body = excluded.body, requested_at = excluded.requested_at`,
      [request.encounterId, request.kind, JSON.stringify(request), request.requestedAt],
    );
  }

  async pendingRegeneration(encounterId: string, kind: string): Promise<RegenerationRequest | undefined> {
    const [row] = await this.#database.all<BodyRow>(
      'select body from regenerations where encounter_id = ? and kind = ?',
      [encounterId, kind],
    );
    return row ? (JSON.parse(row.body) as RegenerationRequest) : undefined;
  }

  async completeRegeneration(encounterId: string, kind: string, generation: number): Promise<void> {
    const now = new Date().toISOString();
    // SQLite's two-argument max() is PostgreSQL's greatest().
    const larger = this.#database.dialect === 'postgres' ? 'greatest' : 'max';
    await this.#database.transaction(async (transaction) => {
      await transaction.run('delete from regenerations where encounter_id = ? and kind = ?', [
        encounterId,
        kind,
      ]);
      await transaction.run(
        `insert into generations (encounter_id, kind, generation, updated_at) values (?, ?, ?, ?)
           on conflict (encounter_id, kind) do update
           set generation = ${larger}(generations.generation, excluded.generation), updated_at = excluded.updated_at`,
        [encounterId, kind, generation, now],
      );
    });
  }

  async generation(encounterId: string, kind: string): Promise<number> {
    const [row] = await this.#database.all<{ generation: number }>(
      'select generation from generations where encounter_id = ? and kind = ?',
      [encounterId, kind],
    );
    return Number(row?.generation ?? 0);
  }

  async noteRecordChange(draftId: string, change: RecordChange): Promise<void> {
    await this.#database.run(
      `insert into record_changes (draft_id, body, updated_at) values (?, ?, ?)
         on conflict (draft_id) do update set body = excluded.body, updated_at = excluded.updated_at`,
      [draftId, JSON.stringify(change), new Date().toISOString()],
    );
  }

  async recordChanges(draftIds: readonly string[]): Promise<Map<string, RecordChange>> {
    const changes = new Map<string, RecordChange>();
    for (const draftId of new Set(draftIds)) {
      const [row] = await this.#database.all<BodyRow>('select body from record_changes where draft_id = ?', [
        draftId,
      ]);
      if (row) changes.set(draftId, JSON.parse(row.body) as RecordChange);
    }
    return changes;
  }

  async purge(before: Date): Promise<number> {
    const cutoff = before.toISOString();
    return this.#database.transaction(async (transaction) => {
      const removed = await transaction.run('delete from drafts where updated_at < ?', [cutoff]);
      await transaction.run('delete from regenerations where requested_at < ?', [cutoff]);
      await transaction.run('delete from generations where updated_at < ?', [cutoff]);
      await transaction.run('delete from record_changes where updated_at < ?', [cutoff]);
      return removed;
    });
  }

  async count(): Promise<number> {
    const [row] = await this.#database.all<{ count: number | string }>(
      'select count(*) as count from drafts',
    );
    return Number(row?.count ?? 0);
  }

  async close(): Promise<void> {
    if (this.#ownsDatabase) await this.#database.close();
  }
}

/** The embedded store: its own SQLite file (0600) in the private data directory. */
export class SqliteDraftStore extends SqlDraftStore {
  constructor(file: string) {
    super(new SqliteDatabase(file === ':memory:' ? file : ensurePrivateFile(file), sqliteSchema), {
      ownsDatabase: true,
    });
  }
}
