import type { Device, DocumentReference, Provenance } from 'fhir/r4.js';
import type { RecordChange } from './draft-refresh.ts';

/**
 * The port between the draft lifecycle and the service's own store (src/drafts/ implements it with
 * node:sqlite). In hold and shadow modes a draft lives here, as the FHIR resources it would be,
 * instead of in the EHR; in every mode the store remembers which draft a pending regeneration
 * replaces and which generation of draft an encounter is at. It holds patient data: the service keeps
 * it in its private data directory and purges it after the retention period.
 */
export type DraftMode = 'write' | 'hold' | 'shadow';
export type DraftStatus = 'preliminary' | 'final' | 'superseded' | 'entered-in-error';

export interface StoredDraft {
  /** The service's own id for the draft (also the `id` of its stored DocumentReference). */
  id: string;
  mode: DraftMode;
  identifierValue: string;
  patientId: string;
  encounterId: string;
  kind: string;
  status: DraftStatus;
  title: string;
  text: string;
  citations: string[];
  flagged: boolean;
  /** The DocumentReference as it stands (preliminary, or final after a shadow sign-off). */
  document: DocumentReference;
  /** The AI Provenance as built; its target names the stored DocumentReference. */
  provenance: Provenance;
  /** The AI Provenance of each earlier text, when the draft was refreshed for a later version of its encounter. */
  earlierProvenances?: Provenance[];
  device: Device;
  /** Provenance of every edit, sign-off and rejection, in order. */
  events: Provenance[];
  /** The DocumentReference id in the EHR once a held draft was signed and written. */
  fhirId?: string;
  /** A draft this one replaces (regeneration), and the one that replaced it. */
  replaces?: string;
  supersededBy?: string;
  createdAt: string;
  updatedAt: string;
}

/** Where a draft lives: the service's store, or the EHR (write mode) by DocumentReference id. */
export interface DraftLocation {
  mode: DraftMode;
  id: string;
}

export interface RegenerationRequest {
  encounterId: string;
  kind: string;
  replaces: DraftLocation;
  requestedAt: string;
}

export interface DraftStore {
  insert(draft: StoredDraft): Promise<void>;
  get(id: string): Promise<StoredDraft | undefined>;
  findByIdentifier(identifierValue: string): Promise<StoredDraft | undefined>;
  listByPatient(patientId: string): Promise<StoredDraft[]>;
  /** Replaces the stored draft when it is still at `expectedUpdatedAt`; false when someone changed it first. */
  replace(draft: StoredDraft, expectedUpdatedAt: string): Promise<boolean>;
  requestRegeneration(request: RegenerationRequest): Promise<void>;
  pendingRegeneration(encounterId: string, kind: string): Promise<RegenerationRequest | undefined>;
  /** Marks the regeneration done and moves the encounter's kind to its next generation. */
  completeRegeneration(encounterId: string, kind: string, generation: number): Promise<void>;
  /** How many times drafts of this kind were regenerated for the encounter (0 for the first draft). */
  generation(encounterId: string, kind: string): Promise<number>;
  /**
   * Notes what changed in the record since a draft (by its id: the EHR's DocumentReference id, or the store's)
   * was written, once a clinician has had a hand in it; replaces an earlier note for the same draft.
   */
  noteRecordChange(draftId: string, change: RecordChange): Promise<void>;
  /** The notes kept for these drafts, by draft id. */
  recordChanges(draftIds: readonly string[]): Promise<Map<string, RecordChange>>;
  /** Removes drafts (and regeneration records) last changed before the cutoff; returns how many drafts. */
  purge(before: Date): Promise<number>;
  close(): Promise<void>;
}
