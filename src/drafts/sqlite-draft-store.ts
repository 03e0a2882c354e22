import { DatabaseSync } from 'node:sqlite';
import type { RecordChange } from '../../fhir/draft-refresh.ts';
import type { DraftStore, RegenerationRequest, StoredDraft } from '../../fhir/draft-store.ts';
import { ensurePrivateFile } from './private-files.ts';

/**
 * The service's own draft store: one SQLite file in the private data directory. Each draft is kept
 * whole as JSON (the FHIR resources it would be) with the columns the lookups need beside it.
 * One process writes it; several replicas would need a shared store (PostgreSQL) instead.
 */
const schema = `
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

export class SqliteDraftStore implements DraftStore {
  readonly #database: DatabaseSync;

  constructor(file: string) {
    this.#database = new DatabaseSync(file === ':memory:' ? file : ensurePrivateFile(file));
    this.#database.exec(
      'pragma journal_mode = wal; pragma synchronous = normal; pragma busy_timeout = 5000;',
    );
    this.#database.exec(schema);
  }

  #bodies(sql: string, ...parameters: string[]): StoredDraft[] {
    return (this.#database.prepare(sql).all(...parameters) as unknown as BodyRow[]).map(
      (row) => JSON.parse(row.body) as StoredDraft,
    );
  }

  async insert(draft: StoredDraft): Promise<void> {
    this.#database
      .prepare(
        'insert into drafts (id, identifier_value, patient_id, encounter_id, kind, updated_at, body) values (?, ?, ?, ?, ?, ?, ?)',
      )
      .run(
        draft.id,
        draft.identifierValue,
        draft.patientId,
        draft.encounterId,
        draft.kind,
        draft.updatedAt,
        JSON.stringify(draft),
      );
  }

  async get(id: string): Promise<StoredDraft | undefined> {
    return this.#bodies('select body from drafts where id = ?', id)[0];
  }

  async findByIdentifier(identifierValue: string): Promise<StoredDraft | undefined> {
    return this.#bodies('select body from drafts where identifier_value = ?', identifierValue)[0];
  }

  async listByPatient(patientId: string): Promise<StoredDraft[]> {
    return this.#bodies('select body from drafts where patient_id = ? order by updated_at desc', patientId);
  }

  async replace(draft: StoredDraft, expectedUpdatedAt: string): Promise<boolean> {
    const result = this.#database
      .prepare('update drafts set updated_at = ?, body = ? where id = ? and updated_at = ?')
      .run(draft.updatedAt, JSON.stringify(draft), draft.id, expectedUpdatedAt);
    return Number(result.changes) === 1;
  }

  async requestRegeneration(request: RegenerationRequest): Promise<void> {
    this.#database
      .prepare(
        `insert into regenerations (encounter_id, kind, body, requested_at) values (?, ?, ?, ?)
         on conflict (encounter_id, kind) do update set body = excluded.body, requested_at = excluded.requested_at`,
      )
      .run(request.encounterId, request.kind, JSON.stringify(request), request.requestedAt);
  }

  async pendingRegeneration(encounterId: string, kind: string): Promise<RegenerationRequest | undefined> {
    const row = this.#database
      .prepare('select body from regenerations where encounter_id = ? and kind = ?')
      .get(encounterId, kind) as BodyRow | undefined;
    return row ? (JSON.parse(row.body) as RegenerationRequest) : undefined;
  }

  async completeRegeneration(encounterId: string, kind: string, generation: number): Promise<void> {
    const now = new Date().toISOString();
    this.#database.exec('begin');
    try {
      this.#database
        .prepare('delete from regenerations where encounter_id = ? and kind = ?')
        .run(encounterId, kind);
      this.#database
        .prepare(
          `insert into generations (encounter_id, kind, generation, updated_at) values (?, ?, ?, ?)
           on conflict (encounter_id, kind) do update set generation = max(generation, excluded.generation), updated_at = excluded.updated_at`,
        )
        .run(encounterId, kind, generation, now);
      this.#database.exec('commit');
    } catch (error) {
      this.#database.exec('rollback');
      throw error;
    }
  }

  async generation(encounterId: string, kind: string): Promise<number> {
    const row = this.#database
      .prepare('select generation from generations where encounter_id = ? and kind = ?')
      .get(encounterId, kind) as { generation: number } | undefined;
    return row?.generation ?? 0;
  }

  async noteRecordChange(draftId: string, change: RecordChange): Promise<void> {
    this.#database
      .prepare(
        `insert into record_changes (draft_id, body, updated_at) values (?, ?, ?)
         on conflict (draft_id) do update set body = excluded.body, updated_at = excluded.updated_at`,
      )
      .run(draftId, JSON.stringify(change), new Date().toISOString());
  }

  async recordChanges(draftIds: readonly string[]): Promise<Map<string, RecordChange>> {
    const changes = new Map<string, RecordChange>();
    const lookup = this.#database.prepare('select body from record_changes where draft_id = ?');
    for (const draftId of new Set(draftIds)) {
      const row = lookup.get(draftId) as BodyRow | undefined;
      if (row) changes.set(draftId, JSON.parse(row.body) as RecordChange);
    }
    return changes;
  }

  async purge(before: Date): Promise<number> {
    const cutoff = before.toISOString();
    const removed = this.#database.prepare('delete from drafts where updated_at < ?').run(cutoff);
    this.#database.prepare('delete from regenerations where requested_at < ?').run(cutoff);
    this.#database.prepare('delete from generations where updated_at < ?').run(cutoff);
    this.#database.prepare('delete from record_changes where updated_at < ?').run(cutoff);
    return Number(removed.changes);
  }

  async count(): Promise<number> {
    const row = this.#database.prepare('select count(*) as count from drafts').get() as { count: number };
    return Number(row.count);
  }

  async close(): Promise<void> {
    if (this.#database.isOpen) this.#database.close();
  }
}
