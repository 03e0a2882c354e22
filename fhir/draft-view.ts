import type { DocumentReference } from 'fhir/r4.js';
import type { EncounterLabel } from './display-labels.ts';
import {
  flaggedDescriptionMarker,
  type RemovedStatement,
  removedStatementExtensionUrl,
} from './draft-note.ts';
import { describeRecordChange, draftBasisOf, type RecordChange } from './draft-refresh.ts';
import type { DraftMode, DraftStatus, StoredDraft } from './draft-store.ts';
import { inlineNoteText } from './note-text.ts';
import { patientIdInReference } from './patient-scope.ts';

/**
 * The plain view of a draft that the review app shows, the same whether the draft lives in the EHR
 * (write mode) or in the service's store (hold, shadow).
 */
export interface DraftView {
  id: string;
  patientId: string;
  encounterId: string;
  kind: string;
  status: DraftStatus;
  text: string;
  title: string;
  createdAt: string;
  citations: string[];
  flagged: boolean;
  mode: DraftMode;
  /** The version the view was read at (EHR versionId, or the store's last change). */
  version?: string;
  /** A draft this one replaces, and the one that replaced it. */
  replaces?: string;
  supersededBy?: string;
  /** `Practitioner/<id>` who signed, once final. */
  signedBy?: string;
  /** The signer's name, as recorded at sign-off (`authenticator.display`). */
  signedByName?: string;
  /** The encounter in words (type and period), as recorded with the draft. */
  encounterLabel?: EncounterLabel;
  /** What the citation verifier removed from a flagged draft, when the writer recorded it. */
  removedStatements?: RemovedStatement[];
  /** The EHR's DocumentReference id once a held draft was signed and written. */
  fhirId?: string;
  /** Set by regenerateDraft: a new draft is on its way and will replace this one. */
  regenerationRequested?: boolean;
  /** When the service last rewrote the draft for a later version of its encounter (absent: never). */
  updatedAt?: string;
  /** What changed in the record since the draft was written, once a clinician had a hand in it. */
  recordChanged?: RecordChangeView;
}

/** A record change as the review app shows it: the counts and references, and one sentence saying so. */
export type RecordChangeView = RecordChange & { summary: string };

/** The view with the record change noted for it (fhir/draft-refresh.ts), if any. */
export function withRecordChange(view: DraftView, change: RecordChange | undefined): DraftView {
  return change ? { ...view, recordChanged: { ...change, summary: describeRecordChange(change) } } : view;
}

const citationPattern = /\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?\]/g;

export function citationsOf(text: string): string[] {
  return [...new Set([...text.matchAll(citationPattern)].map((match) => match[1]))];
}

export function statusOf(document: DocumentReference): DraftStatus {
  if (document.status === 'entered-in-error') return 'entered-in-error';
  if (document.status === 'superseded') return 'superseded';
  if (document.docStatus === 'final' || document.docStatus === 'amended') return 'final';
  return 'preliminary';
}

const bareId = (reference: string | undefined) => reference?.split('/').at(-1) ?? '';

/** The removed statements the writer recorded as extensions (fhir/draft-note.ts). */
export function removedStatementsOf(document: DocumentReference): RemovedStatement[] {
  return (document.extension ?? [])
    .filter((extension) => extension.url === removedStatementExtensionUrl)
    .map((extension) => {
      const parts = extension.extension ?? [];
      const citations = parts
        .filter((part) => part.url === 'citation' && typeof part.valueString === 'string')
        .map((part) => part.valueString as string);
      return {
        line: parts.find((part) => part.url === 'text')?.valueString ?? '',
        reason: parts.find((part) => part.url === 'reason')?.valueCode ?? 'unknown',
        ...(citations.length > 0 ? { citations } : {}),
      };
    });
}

/** Names, labels and removed lines, read from the document the same way for EHR and stored drafts. */
function descriptiveFields(
  document: DocumentReference,
): Pick<DraftView, 'signedBy' | 'signedByName' | 'encounterLabel' | 'removedStatements' | 'updatedAt'> {
  const type = document.context?.encounter?.[0]?.display;
  const { start, end } = document.context?.period ?? {};
  const encounterLabel = { ...(type ? { type } : {}), ...(start ? { start } : {}), ...(end ? { end } : {}) };
  const removedStatements = removedStatementsOf(document);
  const authenticator = document.authenticator;
  const refreshedAt = draftBasisOf(document)?.refreshedAt;
  return {
    ...(refreshedAt ? { updatedAt: refreshedAt } : {}),
    ...(authenticator?.reference ? { signedBy: authenticator.reference } : {}),
    ...(authenticator?.display ? { signedByName: authenticator.display } : {}),
    ...(Object.keys(encounterLabel).length > 0 ? { encounterLabel } : {}),
    ...(removedStatements.length > 0 ? { removedStatements } : {}),
  };
}

/** A draft in the EHR; `identifierSystem` tells which identifier carries encounter|kind|engine. */
export function viewOfDocument(document: DocumentReference, identifierSystem: string): DraftView {
  const identifierValue =
    document.identifier?.find((identifier) => identifier.system === identifierSystem)?.value ?? '';
  const [encounterFromIdentifier, kind = 'unknown'] = identifierValue.split(':');
  const text = inlineNoteText(document) ?? '';
  const replaces = document.relatesTo?.find((relation) => relation.code === 'replaces')?.target?.reference;
  const subject = document.subject?.reference ?? '';
  return {
    id: document.id as string,
    patientId: patientIdInReference(subject) ?? bareId(subject),
    encounterId: bareId(document.context?.encounter?.[0]?.reference) || encounterFromIdentifier,
    kind,
    status: statusOf(document),
    text,
    title: document.content?.[0]?.attachment?.title ?? document.description ?? 'Draft',
    createdAt: document.date ?? document.content?.[0]?.attachment?.creation ?? '',
    citations: citationsOf(text),
    flagged: (document.description ?? '').includes(flaggedDescriptionMarker),
    mode: 'write',
    ...(document.meta?.versionId ? { version: document.meta.versionId } : {}),
    ...(replaces ? { replaces: bareId(replaces) } : {}),
    ...descriptiveFields(document),
  };
}

export function viewOfStored(draft: StoredDraft): DraftView {
  return {
    id: draft.id,
    patientId: draft.patientId,
    encounterId: draft.encounterId,
    kind: draft.kind,
    status: draft.status,
    text: draft.text,
    title: draft.title,
    createdAt: draft.createdAt,
    citations: draft.citations,
    flagged: draft.flagged,
    mode: draft.mode,
    version: draft.updatedAt,
    ...(draft.replaces ? { replaces: draft.replaces } : {}),
    ...(draft.supersededBy ? { supersededBy: draft.supersededBy } : {}),
    ...descriptiveFields(draft.document),
    ...(draft.fhirId ? { fhirId: draft.fhirId } : {}),
  };
}
