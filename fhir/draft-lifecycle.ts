import { randomUUID } from 'node:crypto';
import type { DocumentReference, Provenance } from 'fhir/r4.js';
import { ensureDeviceIn, removedStatementExtensionUrl } from './draft-note.ts';
import { taggedAsEdited } from './draft-refresh.ts';
import type { DraftMode, DraftStore, StoredDraft } from './draft-store.ts';
import { citationsOf, type DraftView, viewOfDocument, viewOfStored, withRecordChange } from './draft-view.ts';
import type { FhirClient, SignOffAuthority } from './fhir-client.ts';
import { isFhirId } from './fhir-id.ts';
import {
  buildEditProvenance,
  buildRejectProvenance,
  buildSignOffProvenance,
} from './lifecycle-provenance.ts';
import { inlineNoteText } from './note-text.ts';
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
  /**
   * `fhir.transactions` (default true): a hold-mode sign-off writes the final note and its two Provenances
   * in one transaction. False, for servers without transactions: one by one, each a conditional create, so
   * a sign-off retried after a failure completes what the first attempt left and duplicates nothing.
   */
  transactions?: boolean;
  /** Queues a pipeline job for the encounter and kind; the writer then supersedes the old draft. */
  requestRegeneration: (encounterId: string, kind: string) => Promise<unknown> | unknown;
  now?: () => Date;
}

export interface DraftLifecycle {
  listDrafts(patientId: string): Promise<DraftView[]>;
  /** The draft, or undefined when there is no draft of this service by that id. */
  getDraft(draftId: string): Promise<DraftView | undefined>;
  editDraft(draftId: string, text: string, actor: string | { practitioner: string }): Promise<DraftView>;
  signDraft(draftId: string, options: SignOptions): Promise<DraftView>;
  rejectDraft(draftId: string, options: { practitioner: string; reason: string }): Promise<DraftView>;
  /** Queues a new draft for the same encounter and kind; returns this draft, marked regenerationRequested. */
  regenerateDraft(draftId: string): Promise<DraftView>;
  /** The same lifecycle acting with another client (the clinician's token for this request). */
  withClient(client: FhirClient): DraftLifecycle;
}

export interface SignOptions {
  practitioner: string;
  /** The text as the clinician signs it; default: the draft's current text. */
  text?: string;
  /** The clinician's name (from their Practitioner resource), written into the signed note's heading. */
  practitionerName?: string;
}

const practitionerPattern = /^Practitioner\/[A-Za-z0-9\-.]{1,64}$/;
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

/**
 * A heading's draft marker: "(AI draft - not final until signed by a clinician)" (agents/extractive-engine.ts),
 * with any dash, or another "(AI draft, ...)" wording.
 */
const unsignedHeadingPattern = /\s*\(\s*AI draft\b[^)]*\)\s*$/i;

/** A name fit for one heading line: no line breaks, no brackets that would read as a citation. */
function headingSafeName(name: string | undefined): string | undefined {
  const cleaned = name
    ?.replace(/[[\]#*_`<>]/g, '')
    .replace(/\s+/g, ' ')
    .trim()
    .slice(0, 120);
  return cleaned || undefined;
}

/**
 * The text as it reads once signed: a heading that said "AI draft - not final until signed" now says who
 * signed and when. Other lines stay exactly as the clinician left them.
 */
export function signedNoteText(text: string, signer: { name?: string; date: Date }): string {
  const who = headingSafeName(signer.name) ?? 'a clinician';
  const when = signer.date.toISOString().slice(0, 10);
  return text
    .split('\n')
    .map((line) =>
      /^\s{0,3}#{1,6}\s/.test(line) && unsignedHeadingPattern.test(line)
        ? line.replace(
            unsignedHeadingPattern,
            ` (drafted with AI assistance; reviewed and signed by ${who}, ${when})`,
          )
        : line,
    )
    .join('\n');
}

/**
 * "AI draft progress summary" and "Progress note summary (AI draft, needs review)" become "Progress summary
 * (drafted with AI assistance)" and "Progress note summary (drafted with AI assistance)": a signed note is no draft.
 */
export function signedNoteTitle(title: string | undefined): string | undefined {
  if (!title) return title;
  const leading = /^\s*AI[- ]draft(?:ed)?\s+(.+)$/i.exec(title);
  if (leading)
    return `${leading[1].charAt(0).toUpperCase()}${leading[1].slice(1)} (drafted with AI assistance)`;
  const trailing = /^(.+?)\s*\(\s*AI draft\b[^)]*\)\s*$/i.exec(title);
  if (trailing) return `${trailing[1]} (drafted with AI assistance)`;
  return title;
}

/**
 * Final, authenticated by the Practitioner, who joins the AI device as author. The verifier's list of
 * removed statements was for the reviewer: it does not go into the chart with the signed note.
 */
function signed(
  document: DocumentReference,
  signer: { practitioner: string; name?: string },
): DocumentReference {
  const authors = document.author ?? [];
  const display = headingSafeName(signer.name);
  const signerReference = { reference: signer.practitioner, ...(display ? { display } : {}) };
  const [first, ...rest] = document.content ?? [];
  const title = signedNoteTitle(first?.attachment?.title);
  const extension = (document.extension ?? []).filter((entry) => entry.url !== removedStatementExtensionUrl);
  const { extension: _removed, ...withoutExtensions } = document;
  return {
    ...withoutExtensions,
    ...(extension.length > 0 ? { extension } : {}),
    docStatus: 'final',
    authenticator: signerReference,
    author: authors.some((author) => author.reference === signer.practitioner)
      ? authors
      : [...authors, signerReference],
    description: 'AI-drafted note, reviewed and signed by a clinician.',
    ...(first ? { content: [{ ...first, attachment: { ...first.attachment, title } }, ...rest] } : {}),
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

/** The If-None-Exist search on the note's identifier: a repeated sign-off finds the note it wrote. */
function identifierCondition(document: DocumentReference): string {
  const identifier = document.identifier?.[0];
  return `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`;
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
    if (!dependencies.client || !isFhirId(draftId)) return undefined;
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
    if (!isFhirId(draftId)) throw outcomeError('invalid', 'not a draft id', 400);
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
    // Tagged so the service never rewrites it for a later version of the encounter, even when the text is unchanged.
    const updated = await fhir.update(withText(taggedAsEdited(document), text, now()), {
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

  /**
   * The text the note is signed with (the clinician's, or the draft's own), its heading rewritten to say who
   * signed; undefined when the draft's stored text already reads that way and nothing changes.
   */
  function textToSign(current: string | undefined, options: SignOptions): string | undefined {
    const base = options.text ?? current;
    if (base === undefined) return undefined;
    const rewritten = signedNoteText(base, { name: options.practitionerName, date: now() });
    return options.text !== undefined || rewritten !== current ? rewritten : undefined;
  }

  async function signEhr(document: DocumentReference, options: SignOptions) {
    const fhir = client();
    const { practitioner } = options;
    const text = textToSign(inlineNoteText(document), options);
    const edited = text !== undefined ? withText(document, text, now()) : document;
    const updated = await fhir.update(signed(edited, { practitioner, name: options.practitionerName }), {
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

  interface SignedNoteWrite {
    fhir: FhirClient;
    document: DocumentReference;
    /** The AI Provenance and the sign-off Provenance for a target (the note's fullUrl or reference). */
    provenancesFor: (target: string) => { ai: Provenance; signOff: Provenance };
    deviceReference: string;
    signOff: SignOffAuthority;
  }

  /**
   * The final note and its two Provenances in one transaction: neither Provenance is ever missing from a
   * final note in the EHR. Every entry is a conditional create (the note on its identifier, each Provenance
   * on its target and its agent), so a transaction repeated after a lost answer finds all three and adds
   * nothing.
   */
  async function writeSignedInTransaction(write: SignedNoteWrite) {
    const documentUrl = `urn:uuid:${randomUUID()}`;
    const { ai, signOff } = write.provenancesFor(documentUrl);
    const [note, , signOffResult] = await write.fhir.transaction(
      [
        {
          fullUrl: documentUrl,
          resource: write.document,
          request: {
            method: 'POST',
            url: 'DocumentReference',
            ifNoneExist: identifierCondition(write.document),
          },
        },
        {
          fullUrl: `urn:uuid:${randomUUID()}`,
          resource: ai,
          request: {
            method: 'POST',
            url: 'Provenance',
            ifNoneExist: `target=${documentUrl}&agent=${write.deviceReference}`,
          },
        },
        {
          fullUrl: `urn:uuid:${randomUUID()}`,
          resource: signOff,
          request: {
            method: 'POST',
            url: 'Provenance',
            ifNoneExist: `target=${documentUrl}&agent=${write.signOff.practitioner}`,
          },
        },
      ],
      { signOff: write.signOff },
    );
    return {
      written: note.resource as DocumentReference,
      signOffEvent: signOffResult.resource as Provenance,
    };
  }

  /**
   * Without transactions: the note, then each Provenance, every one a conditional create. A failure leaves
   * the store's draft preliminary (it is marked signed only after both Provenances exist), and signing again
   * finds the note and any Provenance already written and writes only what is missing.
   */
  async function writeSignedInSteps(write: SignedNoteWrite) {
    const { resource: written } = await write.fhir.create(write.document, {
      ifNoneExist: identifierCondition(write.document),
      signOff: write.signOff,
    });
    const target = versioned(written);
    const { ai, signOff } = write.provenancesFor(target);
    const condition = (agent: string) =>
      `target=${encodeURIComponent(target)}&agent=${encodeURIComponent(agent)}`;
    await write.fhir.create(ai, { ifNoneExist: condition(write.deviceReference) });
    const { resource: signOffEvent } = await write.fhir.create(signOff, {
      ifNoneExist: condition(write.signOff.practitioner),
    });
    return { written, signOffEvent };
  }

  /**
   * Hold mode: the EHR sees the note for the first time, as final. The Device is the service's (written
   * with its own client); the note, its AI Provenance and the sign-off Provenance are written together with
   * the caller's client, and only then is the draft recorded as signed in the store.
   */
  async function signHeld(draft: StoredDraft, options: SignOptions): Promise<DraftView> {
    const fhir = client();
    const { practitioner } = options;
    const text = textToSign(draft.text, options);
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
      { practitioner, name: options.practitionerName },
    );
    const signedAt = now();
    const write: SignedNoteWrite = {
      fhir,
      document,
      deviceReference,
      signOff: { practitioner },
      provenancesFor: (target) => ({
        ai: {
          ...draft.provenance,
          target: [{ reference: target }],
          agent: draft.provenance.agent.map((agent) => ({ ...agent, who: { reference: deviceReference } })),
        },
        signOff: buildSignOffProvenance({ target, practitioner, now: signedAt }),
      }),
    };
    const { written, signOffEvent } =
      dependencies.transactions === false
        ? await writeSignedInSteps(write)
        : await writeSignedInTransaction(write);
    return saveStored(
      draft,
      storedChange(
        draft,
        {
          status: 'final',
          title: signedNoteTitle(draft.title) ?? draft.title,
          text: text ?? draft.text,
          citations: text !== undefined ? citationsOf(text) : draft.citations,
          document: { ...written },
          fhirId: written.id,
        },
        signOffEvent,
      ),
    );
  }

  /** Shadow mode: the same resources a sign-off would write, kept in the store and never sent. */
  function signShadow(draft: StoredDraft, options: SignOptions): Promise<DraftView> {
    const { practitioner } = options;
    const text = textToSign(draft.text, options);
    const document = signed(text !== undefined ? withText(draft.document, text, now()) : draft.document, {
      practitioner,
      name: options.practitionerName,
    });
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
          title: signedNoteTitle(draft.title) ?? draft.title,
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
      if (!isFhirId(patientId)) throw outcomeError('invalid', 'not a patient id', 400);
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
      const views = [...inEhr, ...stored];
      const changes = await store.recordChanges(views.map((view) => view.id));
      return views
        .map((view) => withRecordChange(view, changes.get(view.id)))
        .sort((left, right) => right.createdAt.localeCompare(left.createdAt));
    },

    async getDraft(draftId) {
      try {
        const located = await locate(draftId);
        const view =
          'stored' in located
            ? viewOfStored(located.stored)
            : viewOfDocument(located.document, identifierSystem);
        return withRecordChange(view, (await store.recordChanges([view.id])).get(view.id));
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
      const name = typeof options.practitionerName === 'string' ? options.practitionerName : undefined;
      const signOptions: SignOptions = {
        practitioner,
        ...(options.text !== undefined ? { text: options.text } : {}),
        ...(name ? { practitionerName: name } : {}),
      };
      const located = await locate(draftId);
      if ('document' in located) {
        const status = viewOfDocument(located.document, identifierSystem).status;
        if (status !== 'preliminary') throw notPreliminary(status);
        return signEhr(located.document, signOptions);
      }
      const draft = located.stored;
      if (draft.status !== 'preliminary') throw notPreliminary(draft.status);
      return draft.mode === 'shadow' ? signShadow(draft, signOptions) : signHeld(draft, signOptions);
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
