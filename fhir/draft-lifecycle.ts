import type { DocumentReference, Provenance } from 'fhir/r4.js';
import { ensureDeviceIn } from './draft-note.ts';
import type { DraftMode, DraftStore, StoredDraft } from './draft-store.ts';
import { citationsOf, type DraftView, viewOfDocument, viewOfStored } from './draft-view.ts';
import type { FhirClient } from './fhir-client.ts';
import {
  buildEditProvenance,
  buildRejectProvenance,
  buildSignOffProvenance,
} from './lifecycle-provenance.ts';
import { OperationOutcomeError, outcomeError } from './operation-outcome.ts';

export type { DraftView } from './draft-view.ts';

/**
 * What happens to a draft after the pipeline made it: a clinician edits, signs or rejects it, or asks
 * for a new one. Each change lands as FHIR resources - in the EHR (write mode, and hold mode at
 * sign-off) or in the service's store (hold and shadow) - with a Provenance naming the clinician.
 * The calls are made with the FhirClient the caller hands in: the review app passes one holding the
 * clinician's own token, so the EHR's audit shows the clinician, not the service. Signing is the only
 * way a draft becomes final, and only on behalf of a Practitioner.
 */
export interface DraftLifecycleDependencies {
  /** The site's mode for new drafts; drafts already stored keep the mode they were made in. */
  mode: DraftMode;
  identifierSystem: string;
  store: DraftStore;
  /** The FHIR client to act with (the clinician's, per request); needed for EHR drafts and hold sign-off. */
  client?: FhirClient;
  /**
   * The service's own client, for the one write that is the service's and not the clinician's: the
   * AI Device a held draft names, created at its first sign-off (a user token rarely may create Devices).
   */
  serviceClient?: FhirClient;
  /** Queues a pipeline job for the encounter and kind; the writer then supersedes the old draft. */
  requestRegeneration: (encounterId: string, kind: string) => Promise<unknown> | unknown;
  now?: () => Date;
}

export interface DraftLifecycle {
  listDrafts(patientId: string): Promise<DraftView[]>;
  /** The draft, or undefined when there is no draft of this service by that id. */
  getDraft(draftId: string): Promise<DraftView | undefined>;
  editDraft(draftId: string, text: string, actor: string | { practitioner: string }): Promise<DraftView>;
  signDraft(draftId: string, options: { practitioner: string; text?: string }): Promise<DraftView>;
  rejectDraft(draftId: string, options: { practitioner: string; reason: string }): Promise<DraftView>;
  /** Queues a new draft for the same encounter and kind; returns this draft, marked regenerationRequested. */
  regenerateDraft(draftId: string): Promise<DraftView>;
  /** The same lifecycle acting with another client (the clinician's token for this request). */
  withClient(client: FhirClient): DraftLifecycle;
}

const practitionerPattern = /^Practitioner\/[A-Za-z0-9\-.]{1,64}$/;
const idPattern = /^[A-Za-z0-9\-.]{1,64}$/;
const maxTextLength = 200_000;

function checkPractitioner(practitioner: string): string {
  if (!practitionerPattern.test(practitioner))
    throw outcomeError('invalid', 'the acting clinician must be a Practitioner/<id> reference', 400);
  return practitioner;
}

function checkText(text: string): string {
  if (typeof text !== 'string' || text.trim() === '' || text.length > maxTextLength)
    throw outcomeError('invalid', 'draft text must be non-empty and at most 200000 characters', 400);
  return text;
}

function notPreliminary(status: string): OperationOutcomeError {
  return outcomeError('conflict', `the draft is ${status}; only a preliminary draft can change`, 409);
}

const base64 = (text: string) => Buffer.from(text, 'utf8').toString('base64');

/** The document with new text in its (first) attachment; the title and content type stay. */
function withText(document: DocumentReference, text: string, now: Date): DocumentReference {
  const [first, ...rest] = document.content ?? [];
  return {
    ...document,
    content: [
      {
        ...first,
        attachment: {
          ...first?.attachment,
          contentType: 'text/plain; charset=utf-8',
          data: base64(text),
          creation: now.toISOString(),
        },
      },
      ...rest,
    ],
  };
}

/** Final, authenticated by the Practitioner, who joins the AI device as author. */
function signed(document: DocumentReference, practitioner: string): DocumentReference {
  const authors = document.author ?? [];
  return {
    ...document,
    docStatus: 'final',
    authenticator: { reference: practitioner },
    author: authors.some((author) => author.reference === practitioner)
      ? authors
      : [...authors, { reference: practitioner }],
    description: 'AI-drafted note, reviewed and signed by a clinician.',
  };
}

const rejectionExtensionUrl = 'urn:ehr-draft-agent:fhir:StructureDefinition/rejection-reason';

function rejected(document: DocumentReference, reason: string): DocumentReference {
  return {
    ...document,
    status: 'entered-in-error',
    extension: [
      ...(document.extension ?? []).filter((extension) => extension.url !== rejectionExtensionUrl),
      { url: rejectionExtensionUrl, valueString: reason },
    ],
  };
}

const versioned = (document: DocumentReference) =>
  document.meta?.versionId
    ? `DocumentReference/${document.id}/_history/${document.meta.versionId}`
    : `DocumentReference/${document.id}`;

export function createDraftLifecycle(dependencies: DraftLifecycleDependencies): DraftLifecycle {
  const { store, identifierSystem } = dependencies;
  const now = dependencies.now ?? (() => new Date());

  const client = (): FhirClient => {
    if (!dependencies.client)
      throw outcomeError('exception', 'this draft lives in the EHR: a FHIR client is needed', 500);
    return dependencies.client;
  };

  const isOwnDraft = (document: DocumentReference) =>
    (document.identifier ?? []).some((identifier) => identifier.system === identifierSystem);

  /** The EHR draft by id; undefined when it is missing or not one of this service's drafts. */
  async function readEhrDraft(draftId: string): Promise<DocumentReference | undefined> {
    if (!dependencies.client || !idPattern.test(draftId)) return undefined;
    try {
      const document = await dependencies.client.read<DocumentReference>('DocumentReference', draftId);
      return isOwnDraft(document) ? document : undefined;
    } catch (error) {
      if (error instanceof OperationOutcomeError && (error.status === 404 || error.status === 410))
        return undefined;
      throw error;
    }
  }

  type Located = { stored: StoredDraft } | { document: DocumentReference };

  async function locate(draftId: string): Promise<Located> {
    if (typeof draftId !== 'string' || !idPattern.test(draftId))
      throw outcomeError('invalid', 'not a draft id', 400);
    const stored = await store.get(draftId);
    if (stored) return { stored };
    const document = await readEhrDraft(draftId);
    if (document) return { document };
    throw outcomeError('not-found', `no draft ${draftId}`, 404);
  }

  /** Saves a stored draft's change, refusing to overwrite a change someone else made first. */
  async function saveStored(previous: StoredDraft, next: StoredDraft): Promise<DraftView> {
    if (!(await store.replace(next, previous.updatedAt)))
      throw outcomeError('conflict', 'the draft changed while you were working on it; reload it', 409);
    return viewOfStored(next);
  }

  function storedChange(draft: StoredDraft, change: Partial<StoredDraft>, event: Provenance): StoredDraft {
    let updatedAt = now().toISOString();
    // Two changes within one millisecond must still differ, or the optimistic check would not see them.
    if (updatedAt <= draft.updatedAt) updatedAt = new Date(Date.parse(draft.updatedAt) + 1).toISOString();
    return { ...draft, ...change, events: [...draft.events, event], updatedAt };
  }

  async function editEhr(
    document: DocumentReference,
    text: string,
    practitioner: string,
  ): Promise<DraftView> {
    const fhir = client();
    const updated = await fhir.update(withText(document, text, now()), {
      ifMatchVersion: document.meta?.versionId,
    });
    await fhir.create(
      buildEditProvenance({
        target: versioned(updated),
        revisionOf: versioned(document),
        practitioner,
        now: now(),
      }),
    );
    return viewOfDocument(updated, identifierSystem);
  }

  async function signEhr(document: DocumentReference, practitioner: string, text: string | undefined) {
    const fhir = client();
    const edited = text !== undefined ? withText(document, text, now()) : document;
    const updated = await fhir.update(signed(edited, practitioner), {
      ifMatchVersion: document.meta?.versionId,
      signOff: { practitioner },
    });
    await fhir.create(
      buildSignOffProvenance({
        target: versioned(updated),
        revisionOf: versioned(document),
        practitioner,
        now: now(),
      }),
    );
    return viewOfDocument(updated, identifierSystem);
  }

  /**
   * Hold mode: the EHR sees the note for the first time, as final. The Device, the note (conditional
   * create on its identifier, so a retried sign-off finds it), the AI Provenance and the sign-off
   * Provenance are written with the caller's client.
   */
  async function signHeld(
    draft: StoredDraft,
    practitioner: string,
    text: string | undefined,
  ): Promise<DraftView> {
    const fhir = client();
    const deviceReference = await ensureDeviceIn(dependencies.serviceClient ?? fhir, draft.device);
    const logicalDevice = draft.document.author?.[0]?.reference;
    const source = text !== undefined ? withText(draft.document, text, now()) : draft.document;
    // The store's id and the relation to an earlier held draft mean nothing to the EHR.
    const { id: _storeId, meta, relatesTo: _relatesTo, ...unwritten } = source;
    const document = signed(
      {
        ...unwritten,
        meta: { security: meta?.security },
        author: (source.author ?? []).map((author) =>
          author.reference === logicalDevice ? { ...author, reference: deviceReference } : author,
        ),
      },
      practitioner,
    );
    const identifier = document.identifier?.[0];
    const { resource: written } = await fhir.create(document, {
      ifNoneExist: `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`,
      signOff: { practitioner },
    });
    const aiProvenance: Provenance = {
      ...draft.provenance,
      target: [{ reference: versioned(written) }],
      agent: draft.provenance.agent.map((agent) => ({ ...agent, who: { reference: deviceReference } })),
    };
    await fhir.create(aiProvenance);
    const signOff = buildSignOffProvenance({ target: versioned(written), practitioner, now: now() });
    await fhir.create(signOff);
    return saveStored(
      draft,
      storedChange(
        draft,
        {
          status: 'final',
          text: text ?? draft.text,
          citations: text !== undefined ? citationsOf(text) : draft.citations,
          document: { ...written },
          fhirId: written.id,
        },
        signOff,
      ),
    );
  }

  /** Shadow mode: the same resources a sign-off would write, kept in the store and never sent. */
  function signShadow(
    draft: StoredDraft,
    practitioner: string,
    text: string | undefined,
  ): Promise<DraftView> {
    const document = signed(
      text !== undefined ? withText(draft.document, text, now()) : draft.document,
      practitioner,
    );
    const signOff = buildSignOffProvenance({
      target: `DocumentReference/${draft.id}`,
      practitioner,
      now: now(),
    });
    return saveStored(
      draft,
      storedChange(
        draft,
        {
          status: 'final',
          text: text ?? draft.text,
          citations: text !== undefined ? citationsOf(text) : draft.citations,
          document,
        },
        signOff,
      ),
    );
  }

  const lifecycle: DraftLifecycle = {
    async listDrafts(patientId) {
      if (!idPattern.test(patientId)) throw outcomeError('invalid', 'not a patient id', 400);
      const stored = (await store.listByPatient(patientId)).map(viewOfStored);
      // A held draft that was signed is in the EHR too; it is listed once, from the store.
      const written = new Set(stored.map((view) => view.fhirId).filter(Boolean));
      let inEhr: DraftView[] = [];
      if (dependencies.client && dependencies.mode === 'write') {
        const documents = await dependencies.client.search<DocumentReference>('DocumentReference', {
          patient: `Patient/${patientId}`,
          type: 'http://loinc.org|34133-9',
          _count: 100,
        });
        inEhr = documents
          .filter((document) => isOwnDraft(document) && !written.has(document.id))
          .map((document) => viewOfDocument(document, identifierSystem))
          .filter((view) => view.patientId === patientId);
      }
      return [...inEhr, ...stored].sort((left, right) => right.createdAt.localeCompare(left.createdAt));
    },

    async getDraft(draftId) {
      try {
        const located = await locate(draftId);
        return 'stored' in located
          ? viewOfStored(located.stored)
          : viewOfDocument(located.document, identifierSystem);
      } catch (error) {
        if (error instanceof OperationOutcomeError && (error.status === 404 || error.status === 400))
          return undefined;
        throw error;
      }
    },

    async editDraft(draftId, text, actor) {
      const practitioner = checkPractitioner(typeof actor === 'string' ? actor : actor?.practitioner);
      checkText(text);
      const located = await locate(draftId);
      if ('document' in located) {
        const status = viewOfDocument(located.document, identifierSystem).status;
        if (status !== 'preliminary') throw notPreliminary(status);
        return editEhr(located.document, text, practitioner);
      }
      const draft = located.stored;
      if (draft.status !== 'preliminary') throw notPreliminary(draft.status);
      const event = buildEditProvenance({
        target: `DocumentReference/${draft.id}`,
        practitioner,
        now: now(),
      });
      return saveStored(
        draft,
        storedChange(
          draft,
          { text, citations: citationsOf(text), document: withText(draft.document, text, now()) },
          event,
        ),
      );
    },

    async signDraft(draftId, options) {
      const practitioner = checkPractitioner(options?.practitioner);
      if (options.text !== undefined) checkText(options.text);
      const located = await locate(draftId);
      if ('document' in located) {
        const status = viewOfDocument(located.document, identifierSystem).status;
        if (status !== 'preliminary') throw notPreliminary(status);
        return signEhr(located.document, practitioner, options.text);
      }
      const draft = located.stored;
      if (draft.status !== 'preliminary') throw notPreliminary(draft.status);
      return draft.mode === 'shadow'
        ? signShadow(draft, practitioner, options.text)
        : signHeld(draft, practitioner, options.text);
    },

    async rejectDraft(draftId, options) {
      const practitioner = checkPractitioner(options?.practitioner);
      const reason = typeof options.reason === 'string' ? options.reason.trim() : '';
      if (!reason || reason.length > 2000)
        throw outcomeError('invalid', 'a rejection needs a reason (at most 2000 characters)', 400);
      const located = await locate(draftId);
      if ('document' in located) {
        const { document } = located;
        const status = viewOfDocument(document, identifierSystem).status;
        if (status !== 'preliminary') throw notPreliminary(status);
        const fhir = client();
        const updated = await fhir.update(rejected(document, reason), {
          ifMatchVersion: document.meta?.versionId,
        });
        await fhir.create(
          buildRejectProvenance({
            target: versioned(updated),
            revisionOf: versioned(document),
            practitioner,
            reason,
            now: now(),
          }),
        );
        return viewOfDocument(updated, identifierSystem);
      }
      const draft = located.stored;
      if (draft.status !== 'preliminary') throw notPreliminary(draft.status);
      // Never in the EHR: nothing to retract there; the store records the rejection as the EHR would.
      const event = buildRejectProvenance({
        target: `DocumentReference/${draft.id}`,
        practitioner,
        reason,
        now: now(),
      });
      return saveStored(
        draft,
        storedChange(
          draft,
          { status: 'entered-in-error', document: rejected(draft.document, reason) },
          event,
        ),
      );
    },

    async regenerateDraft(draftId) {
      const located = await locate(draftId);
      const view =
        'stored' in located
          ? viewOfStored(located.stored)
          : viewOfDocument(located.document, identifierSystem);
      if (view.status !== 'preliminary') throw notPreliminary(view.status);
      await store.requestRegeneration({
        encounterId: view.encounterId,
        kind: view.kind,
        replaces: { mode: view.mode, id: view.id },
        requestedAt: now().toISOString(),
      });
      await dependencies.requestRegeneration(view.encounterId, view.kind);
      return { ...view, regenerationRequested: true };
    },

    withClient(client) {
      return createDraftLifecycle({ ...dependencies, client });
    },
  };
  return lifecycle;
}
