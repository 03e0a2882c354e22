import { randomUUID } from 'node:crypto';
import type {
  Device,
  DocumentReference,
  Encounter,
  Extension,
  Patient,
  Provenance,
  Reference,
} from 'fhir/r4.js';
import { encounterTypeText } from './display-labels.ts';
import {
  type DraftBasis,
  draftBasisExtension,
  draftBasisOf,
  type RecordChange,
  textDigest,
  touchedSinceDrafted,
  writtenFromLaterEncounter,
} from './draft-refresh.ts';
import type {
  DraftLocation,
  DraftMode,
  DraftStore,
  RegenerationRequest,
  StoredDraft,
} from './draft-store.ts';
import type { FhirClient, TransactionEntry } from './fhir-client.ts';
import { OperationOutcomeError, outcomeError } from './operation-outcome.ts';

/**
 * Builds and writes the draft note: a US Core DocumentReference (LOINC 34133-9, clinical-note,
 * docStatus preliminary, AIAST security label) with a stable identifier, written by conditional
 * create so a repeated event never makes a second draft, and a Provenance naming the exact versions
 * of the resources the draft cites, in one transaction so that neither exists without the other.
 * The draft also records those versions itself (`context.related`), so a Provenance written later
 * (servers without transactions) states what the draft was made from, not what a later run read.
 * This module knows FHIR only; what the text says comes from the agents, handed in as plain data.
 */
export interface DraftContent {
  kind: string;
  title: string;
  text: string;
  engine: { id: string; version: string; model?: string };
  prompt?: { id: string; version: string; rendered?: string };
  /** Every prompt template the run used (named in the contained prompt). */
  prompts?: { id: string; version: string }[];
  /** `Type/id` -> versionId of every resource the draft cites. */
  sources: Map<string, string | undefined>;
  verification: {
    cited: number;
    removed: number;
    flagged: boolean;
    /** The removed lines themselves, shown to the reviewer with the draft (never logged: patient data). */
    removedLines?: RemovedStatement[];
  };
  /** Rules whose nudges the draft carries (Provenance derivations). */
  rules?: { id: string; version: string }[];
  /** What the text was written from beyond its citations: the encounter version and how far the record reached. */
  basis?: Pick<DraftBasis, 'encounterVersion' | 'encounterUpdated' | 'retrievedThrough'>;
}

export const aiAssertedLabel = {
  system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue',
  code: 'AIAST',
  display: 'Artificial Intelligence asserted',
};

/** Stable per encounter, kind, engine and generation: a repeated event finds the same draft; a regeneration makes a new one. */
function draftIdentifierValue(
  encounterId: string,
  kind: string,
  engine: DraftContent['engine'],
  generation = 0,
): string {
  // ':' not '|': a '|' inside a token value must be escaped in searches, and servers differ in how
  // (or whether) they honour the escape, which would break the conditional create.
  return `${encounterId}:${kind}:${engine.id}-${engine.version}${generation > 0 ? `:g${generation}` : ''}`;
}

/** Marks a draft whose verifier removed unsupported lines, so every reader (and the review list) can tell. */
export const flaggedDescriptionMarker = 'Some unsupported statements were removed: review with care.';

/** A line the citation verifier removed, and why (`no-citation`, `unknown-citation`, `other-patient`). */
export interface RemovedStatement {
  line: string;
  reason: string;
  citations?: string[];
}

/**
 * One extension per removed statement on the preliminary draft (sub-extensions `text`, `reason`,
 * `citation`), so the reviewer sees what the verifier took out wherever the draft lives; sign-off drops them.
 */
export const removedStatementExtensionUrl = 'urn:ehr-draft-agent:fhir:StructureDefinition/removed-statement';
const maxRemovedStatements = 30;
const maxRemovedStatementCharacters = 500;

function removedStatementExtensions(statements: RemovedStatement[] | undefined): Extension[] {
  return (statements ?? []).slice(0, maxRemovedStatements).map((statement) => {
    // A line that cited another patient's record is not shown again to this patient's reviewer.
    const withheld = statement.reason === 'other-patient';
    const text = statement.line.trim().slice(0, maxRemovedStatementCharacters);
    return {
      url: removedStatementExtensionUrl,
      extension: [
        ...(withheld || !text ? [] : [{ url: 'text', valueString: text }]),
        { url: 'reason', valueCode: statement.reason },
        ...(withheld
          ? []
          : (statement.citations ?? []).map((citation) => ({ url: 'citation', valueString: citation }))),
      ],
    };
  });
}

export function deviceIdFor(engine: DraftContent['engine']): string {
  return `ehr-draft-agent-${engine.id}`.replace(/[^A-Za-z0-9\-.]/g, '-').slice(0, 64);
}

const aiDeviceTypeSystem = 'http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS';

/**
 * The author Device as in the AI Transparency IG's AI-Device (reference/shapes/ai-device.json) when a
 * model wrote the draft; the model-free extractive engine is a plain Device, since calling it an AI
 * would misinform the reader.
 */
/** Whether written resources declare their profiles (`fhir.declareProfiles`). */
export interface ProfileOptions {
  /**
   * Default true. Medplum looks up the StructureDefinition of a resource declaring meta.profile and
   * answers 403 unless the token may read StructureDefinition; false leaves meta.profile out.
   */
  declareProfiles?: boolean;
}

export function buildDevice(
  engine: DraftContent['engine'],
  identifierSystem: string,
  options: ProfileOptions = {},
): Device {
  const isModel = engine.id !== 'extractive';
  const declareProfiles = options.declareProfiles ?? true;
  return {
    resourceType: 'Device',
    ...(isModel
      ? {
          ...(declareProfiles
            ? { meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Device'] } }
            : {}),
          extension: [
            {
              url: 'http://hl7.org/fhir/uv/aitransparency/StructureDefinition/aitransparency.AIKind',
              valueCodeableConcept: {
                coding: [{ system: aiDeviceTypeSystem, code: 'Large-Language-Models' }],
              },
            },
          ],
        }
      : {}),
    identifier: [{ system: `${identifierSystem}:device`, value: deviceIdFor(engine) }],
    type: isModel
      ? { coding: [{ system: aiDeviceTypeSystem, code: 'Artificial-Intelligence' }] }
      : { text: 'Rule-based extractive summariser' },
    deviceName: [
      {
        name: engine.model ? `${engine.model} via ehr-draft-agent` : `ehr-draft-agent ${engine.id}`,
        type: 'model-name',
      },
    ],
    version: [{ value: engine.version }],
  };
}

export function buildDraftDocumentReference(
  content: DraftContent,
  context: {
    patient: Patient;
    encounter: Encounter;
    identifierSystem: string;
    deviceReference: string;
    now: Date;
    generation?: number;
    /** The draft this one replaces (regeneration), as `DocumentReference/<id>`. */
    replaces?: string;
    /** Set when the text is rewritten for a later version of the encounter (see fhir/draft-refresh.ts). */
    refreshedAt?: Date;
  },
): DocumentReference {
  const { encounter } = context;
  const flaggedNote = content.verification.flagged ? ` ${flaggedDescriptionMarker}` : '';
  const removed = removedStatementExtensions(content.verification.removedLines);
  const encounterType = encounterTypeText(encounter);
  return {
    resourceType: 'DocumentReference',
    meta: { security: [aiAssertedLabel] },
    ...(removed.length > 0 ? { extension: removed } : {}),
    identifier: [
      {
        system: context.identifierSystem,
        value: draftIdentifierValue(encounter.id as string, content.kind, content.engine, context.generation),
      },
    ],
    status: 'current',
    docStatus: 'preliminary',
    type: { coding: [{ system: 'http://loinc.org', code: '34133-9', display: 'Summary of episode note' }] },
    category: [
      {
        coding: [
          {
            system: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category',
            code: 'clinical-note',
          },
        ],
      },
    ],
    subject: { reference: `Patient/${context.patient.id}` },
    date: context.now.toISOString(),
    author: [
      {
        reference: context.deviceReference,
        display: `AI drafter (${content.engine.model ?? content.engine.id}) - draft`,
      },
    ],
    description: `AI-generated draft (${content.kind}) awaiting clinician review.${flaggedNote}`,
    content: [
      {
        attachment: {
          contentType: 'text/plain; charset=utf-8',
          data: Buffer.from(content.text, 'utf8').toString('base64'),
          title: content.title,
          creation: context.now.toISOString(),
        },
      },
    ],
    ...(context.replaces
      ? { relatesTo: [{ code: 'replaces', target: { reference: context.replaces } }] }
      : {}),
    context: {
      // The type in words, so readers (and the review app) can name the visit without reading the Encounter.
      encounter: [
        { reference: `Encounter/${encounter.id}`, ...(encounterType ? { display: encounterType } : {}) },
      ],
      ...(encounter.period ? { period: encounter.period } : {}),
      related: provenanceBasisReferences(content),
      // What lets a later version of the encounter refresh the draft, or tell that a clinician has taken it over.
      extension: [
        draftBasisExtension({
          ...content.basis,
          textDigest: textDigest(content.text),
          ...(context.refreshedAt ? { refreshedAt: context.refreshedAt.toISOString() } : {}),
        }),
      ],
    },
  };
}

/** What a draft's AI Provenance states besides its target and agent: the sources, rules and prompt templates. */
export type ProvenanceBasis = Pick<DraftContent, 'sources' | 'rules' | 'prompt' | 'prompts'>;

const ruleIdentifierSystem = 'urn:ehr-draft-agent:rule';
const promptIdentifierSystem = 'urn:ehr-draft-agent:prompt-template';

function versioned(reference: string, versionId: string | undefined): string {
  return versionId ? `${reference}/_history/${versionId}` : reference;
}

function promptTemplates(basis: ProvenanceBasis): { id: string; version: string }[] {
  const templates = [basis.prompt, ...(basis.prompts ?? [])].filter(
    (prompt): prompt is { id: string; version: string } => Boolean(prompt),
  );
  const seen = new Set<string>();
  return templates.filter((template) => {
    const key = `${template.id}@${template.version}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/**
 * The draft's own record of what it was made from, as `context.related`: every cited resource at the
 * exact version read, and the rules and prompt templates by logical identifier (the EHR holds no
 * resource for them).
 */
function provenanceBasisReferences(basis: ProvenanceBasis): Reference[] {
  return [
    ...[...basis.sources].map(([reference, versionId]) => ({ reference: versioned(reference, versionId) })),
    ...(basis.rules ?? []).map((rule) => ({
      identifier: { system: ruleIdentifierSystem, value: `${rule.id}@${rule.version}` },
      display: `rule ${rule.id} v${rule.version}`,
    })),
    ...promptTemplates(basis).map((template) => ({
      identifier: { system: promptIdentifierSystem, value: `${template.id}@${template.version}` },
      display: `prompt template ${template.id} v${template.version}`,
    })),
  ];
}

function splitVersion(value: string): { id: string; version: string } | undefined {
  const at = value.lastIndexOf('@');
  return at > 0 ? { id: value.slice(0, at), version: value.slice(at + 1) } : undefined;
}

/**
 * The basis a draft recorded for itself (see provenanceBasisReferences). The rendered prompt is not
 * on the draft (it holds the patient's record): a Provenance built from this names the templates only.
 */
export function draftProvenanceBasis(draft: DocumentReference): ProvenanceBasis {
  const sources = new Map<string, string | undefined>();
  const rules: { id: string; version: string }[] = [];
  const prompts: { id: string; version: string }[] = [];
  for (const related of draft.context?.related ?? []) {
    const match = /^([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?$/.exec(
      related.reference ?? '',
    );
    if (match) sources.set(match[1], match[2]);
    const identified = related.identifier?.value ? splitVersion(related.identifier.value) : undefined;
    if (identified && related.identifier?.system === ruleIdentifierSystem) rules.push(identified);
    if (identified && related.identifier?.system === promptIdentifierSystem) prompts.push(identified);
  }
  return { sources, rules, ...(prompts.length > 0 ? { prompt: prompts[0], prompts } : {}) };
}

/**
 * The AI Provenance exactly as reference/shapes/ai-provenance.json (HL7 AI Transparency IG): the
 * prompt contained as an AIInputPrompt DocumentReference and named as a derivation, every cited
 * resource as a source at the exact version read, the rules as derivations. Rules are referenced
 * logically (identifier) because the EHR has no PlanDefinition for them, and servers that enforce
 * referential integrity (HAPI's default) refuse a reference to a resource they do not hold.
 */
export function buildDraftProvenance(
  content: ProvenanceBasis,
  /** The draft: `DocumentReference/<id>/_history/<version>`, or its `urn:uuid:` fullUrl in a transaction. */
  target: string,
  deviceReference: string,
  now: Date,
  /** `revisionOf`: the draft's version this one rewrote (a refresh), `DocumentReference/<id>/_history/<version>`. */
  options: ProfileOptions & { revisionOf?: string } = {},
): Provenance {
  return {
    resourceType: 'Provenance',
    ...((options.declareProfiles ?? true)
      ? { meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance'] } }
      : {}),
    ...(content.prompt
      ? {
          contained: [
            promptDocument({
              id: 'prompt',
              status: 'current',
              type: {
                coding: [
                  {
                    system: 'http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIinputsCS',
                    code: 'AIInputPrompt',
                  },
                ],
              },
              content: [
                {
                  attachment: {
                    contentType: 'text/markdown',
                    data: Buffer.from(promptText(content), 'utf8').toString('base64'),
                  },
                },
              ],
            }),
          ],
        }
      : {}),
    target: [{ reference: target }],
    occurredDateTime: now.toISOString(),
    recorded: now.toISOString(),
    reason: [
      { coding: [aiAssertedLabel] },
      { coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }] },
    ],
    activity: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation', code: 'CREATE' }],
    },
    agent: [
      {
        type: {
          coding: [
            { system: 'http://terminology.hl7.org/CodeSystem/provenance-participant-type', code: 'author' },
          ],
        },
        role: [{ coding: [{ system: aiDeviceTypeSystem, code: 'Artificial-Intelligence' }] }],
        who: { reference: deviceReference },
      },
    ],
    entity: [
      ...[...content.sources].map(([reference, versionId]) => ({
        role: 'source' as const,
        what: { reference: versioned(reference, versionId) },
      })),
      ...(content.rules ?? []).map((rule) => ({
        role: 'derivation' as const,
        what: {
          identifier: { system: ruleIdentifierSystem, value: `${rule.id}@${rule.version}` },
          display: `rule ${rule.id} v${rule.version}`,
        },
      })),
      ...(content.prompt ? [{ role: 'derivation' as const, what: { reference: '#prompt' } }] : []),
      ...(options.revisionOf ? [{ role: 'revision' as const, what: { reference: options.revisionOf } }] : []),
    ],
  };
}

/** The prompt as the model saw it, headed by the template ids and versions so it can be traced to the files. */
function promptText(content: ProvenanceBasis): string {
  const templates = promptTemplates(content).map((prompt) => `${prompt.id}@${prompt.version}`);
  const header = `<!-- prompt templates: ${templates.join(', ')} -->`;
  return content.prompt?.rendered ? `${header}\n${content.prompt.rendered}` : header;
}

// Contained resources are typed as the base Resource; this keeps the prompt's own fields checked.
const promptDocument = (document: Omit<DocumentReference, 'resourceType'>) =>
  ({ resourceType: 'DocumentReference', ...document }) as DocumentReference;

export interface WrittenDraft {
  /** The draft as written to the EHR, or as stored by the service (hold, shadow: its id is the store's). */
  draft: DocumentReference;
  provenance: Provenance | undefined;
  /** False when the draft already existed (a repeated event). */
  created: boolean;
  /** Where the draft went. */
  mode: DraftMode;
}

/** The draft an encounter already has (of the kind and generation at hand), where it lives and its state. */
export interface ExistingDraft {
  location: DraftLocation;
  /** The DocumentReference as read from the EHR, or as kept in the store. */
  document: DocumentReference;
  stored?: StoredDraft;
  /** What the draft recorded it was written from; undefined for drafts from before drafts recorded it. */
  basis: DraftBasis | undefined;
  /** A clinician has edited, signed or rejected it (or the service cannot vouch that nobody did). */
  touched: boolean;
}

/**
 * What a refresh did: rewrote the draft; found that a clinician had taken it over meanwhile; or found the
 * encounter had moved on to a later version while this job drafted (that version's job refreshes it).
 */
export type RefreshResult =
  | { outcome: 'refreshed'; written: WrittenDraft }
  | { outcome: 'touched'; existing: ExistingDraft }
  | { outcome: 'superseded' };

/** How often a refresh re-reads a draft that changed under it before it gives up (the job is then retried). */
const refreshAttempts = 3;

export interface DraftNoteWriterOptions extends ProfileOptions {
  /** write (default): to the EHR as preliminary; hold: kept in the store until sign-off; shadow: stored, never written. */
  mode?: DraftMode;
  /** Needed for hold and shadow, and for regeneration in any mode. */
  store?: DraftStore;
  /**
   * Default true: the Device, the draft and its Provenance go in one transaction Bundle. False, for
   * servers without transactions: the draft first, then its Provenance built from the draft's own record.
   */
  transactions?: boolean;
}

/**
 * Writes a draft where the site's mode says: to the EHR, or into the service's own store. In the EHR
 * the draft and its AI Provenance are one transaction of conditional creates, so neither exists
 * without the other and a repeated transaction (a crash, a lost answer, a second worker) finds both
 * and adds nothing. A pending regeneration for the encounter and kind makes a new generation that
 * `relatesTo` replaces the old draft, and the old one becomes superseded. The writer only ever writes
 * preliminary drafts.
 */
export class DraftNoteWriter {
  readonly #client: FhirClient;
  readonly #identifierSystem: string;
  readonly #mode: DraftMode;
  readonly #store: DraftStore | undefined;
  readonly #transactions: boolean;
  readonly #profiles: ProfileOptions;
  readonly #deviceReferences = new Map<string, string>();

  constructor(client: FhirClient, identifierSystem: string, options: DraftNoteWriterOptions = {}) {
    this.#client = client;
    this.#identifierSystem = identifierSystem;
    this.#mode = options.mode ?? 'write';
    this.#store = options.store;
    this.#transactions = options.transactions ?? true;
    this.#profiles = { declareProfiles: options.declareProfiles ?? true };
    if (this.#mode !== 'write' && !this.#store)
      throw new Error(`drafts.mode ${this.#mode} needs a draft store`);
  }

  get mode(): DraftMode {
    return this.#mode;
  }

  /** The author Device in the EHR (conditional create on its identifier), created once per engine. */
  async ensureDevice(engine: DraftContent['engine'], client: FhirClient = this.#client): Promise<string> {
    const cached = this.#deviceReferences.get(engine.id);
    if (cached) return cached;
    const reference = await ensureDeviceIn(
      client,
      buildDevice(engine, this.#identifierSystem, this.#profiles),
    );
    this.#deviceReferences.set(engine.id, reference);
    return reference;
  }

  async write(
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now = new Date(),
  ): Promise<WrittenDraft> {
    const encounterId = encounter.id as string;
    const regeneration = await this.#store?.pendingRegeneration(encounterId, content.kind);
    const current = (await this.#store?.generation(encounterId, content.kind)) ?? 0;
    const generation = regeneration ? current + 1 : current;
    const written =
      this.#mode === 'write'
        ? await this.#writeToEhr(content, patient, encounter, now, generation, regeneration)
        : await this.#keepInStore(content, patient, encounter, now, generation, regeneration);
    if (regeneration) {
      await this.#supersede(regeneration, written);
      await this.#store?.completeRegeneration(encounterId, content.kind, generation);
    }
    return written;
  }

  async #writeToEhr(
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now: Date,
    generation: number,
    regeneration: RegenerationRequest | undefined,
  ): Promise<WrittenDraft> {
    const build = (deviceReference: string) => {
      const document = buildDraftDocumentReference(content, {
        patient,
        encounter,
        identifierSystem: this.#identifierSystem,
        deviceReference,
        now,
        generation,
        replaces:
          regeneration?.replaces.mode === 'write'
            ? `DocumentReference/${regeneration.replaces.id}`
            : undefined,
      });
      assertPreliminary(document);
      return document;
    };
    return this.#transactions
      ? this.#writeInTransaction(content, build, now)
      : this.#writeInSteps(content, build, now);
  }

  /**
   * One transaction of a draft's entries (the document, then its Provenance) that name the AI Device: a Device
   * already known by id, otherwise a conditional create of it at the front of the same transaction (a placeholder
   * reference the server resolves), remembered once the server has assigned its id. Returns the last two results.
   */
  async #transactionWithDevice(
    engine: DraftContent['engine'],
    entriesFor: (deviceReference: string) => TransactionEntry[],
  ) {
    const knownDevice = this.#deviceReferences.get(engine.id);
    const deviceReference = knownDevice ?? `urn:uuid:${randomUUID()}`;
    const entries: TransactionEntry[] = [];
    if (!knownDevice) {
      const device = buildDevice(engine, this.#identifierSystem, this.#profiles);
      entries.push({
        fullUrl: deviceReference,
        resource: device,
        request: { method: 'POST', url: 'Device', ifNoneExist: identifierCondition(device) },
      });
    }
    entries.push(...entriesFor(deviceReference));
    const results = await this.#client.transaction(entries);
    if (!knownDevice) this.#deviceReferences.set(engine.id, `Device/${results[0].resource.id}`);
    return results.slice(-2);
  }

  /**
   * Device (until its id is known), draft and Provenance in one transaction of conditional creates.
   * The Provenance is conditional on its target: when the draft is already there, so is its Provenance
   * (they were written together), and the transaction finds both and creates neither.
   */
  async #writeInTransaction(
    content: DraftContent,
    build: (deviceReference: string) => DocumentReference,
    now: Date,
  ): Promise<WrittenDraft> {
    const documentUrl = `urn:uuid:${randomUUID()}`;
    const [documentResult, provenanceResult] = await this.#transactionWithDevice(
      content.engine,
      (deviceReference) => {
        const document = build(deviceReference);
        return [
          {
            fullUrl: documentUrl,
            resource: document,
            request: { method: 'POST', url: 'DocumentReference', ifNoneExist: identifierCondition(document) },
          },
          {
            fullUrl: `urn:uuid:${randomUUID()}`,
            resource: buildDraftProvenance(content, documentUrl, deviceReference, now, this.#profiles),
            request: { method: 'POST', url: 'Provenance', ifNoneExist: `target=${documentUrl}` },
          },
        ];
      },
    );
    return {
      draft: documentResult.resource as DocumentReference,
      provenance: provenanceResult.resource as Provenance,
      created: documentResult.status === 201,
      mode: 'write',
    };
  }

  /**
   * For servers without transactions: the draft (conditional create), then its Provenance (conditional
   * on its target) if it has none yet. A run that finds the draft already there (a retry after the
   * Provenance failed) writes the Provenance from the draft's own record of its sources, never from
   * what this run read, which may be later versions than the draft was made from.
   */
  async #writeInSteps(
    content: DraftContent,
    build: (deviceReference: string) => DocumentReference,
    now: Date,
  ): Promise<WrittenDraft> {
    const deviceReference = await this.ensureDevice(content.engine);
    const document = build(deviceReference);
    const { resource: draft, created } = await this.#client.create(document, {
      ifNoneExist: identifierCondition(document),
    });
    if (!created) {
      // Servers differ in whether a plain reference matches a versioned target, so ask for both.
      const existing = await this.#client.search<Provenance>('Provenance', {
        target: [`DocumentReference/${draft.id}`, versionedReference(draft)].join(','),
      });
      if (existing.length > 0) return { draft, provenance: existing[0], created, mode: 'write' };
    }
    const author = draft.author?.find((candidate) => candidate.reference?.startsWith('Device/'))?.reference;
    const provenance = created
      ? buildDraftProvenance(content, versionedReference(draft), deviceReference, now, this.#profiles)
      : buildDraftProvenance(
          draftProvenanceBasis(draft),
          versionedReference(draft),
          author ?? deviceReference,
          now,
          this.#profiles,
        );
    // Conditional on its target too: a retried POST whose answer was lost, or a second worker holding the
    // same job after a lease ran out, finds the first Provenance instead of writing another.
    const { resource: written } = await this.#client.create(provenance, {
      ifNoneExist: `target=${encodeURIComponent(versionedReference(draft))}`,
    });
    return { draft, provenance: written, created, mode: 'write' };
  }

  async #keepInStore(
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now: Date,
    generation: number,
    regeneration: RegenerationRequest | undefined,
  ): Promise<WrittenDraft> {
    const store = this.#store as DraftStore;
    const device = buildDevice(content.engine, this.#identifierSystem, this.#profiles);
    // Not in the EHR yet: the Device is named by its logical id until a sign-off writes it.
    const deviceReference = `Device/${deviceIdFor(content.engine)}`;
    const replaces =
      regeneration && regeneration.replaces.mode !== 'write' ? regeneration.replaces.id : undefined;
    const built = buildDraftDocumentReference(content, {
      patient,
      encounter,
      identifierSystem: this.#identifierSystem,
      deviceReference,
      now,
      generation,
      replaces: replaces ? `DocumentReference/${replaces}` : undefined,
    });
    assertPreliminary(built);
    const identifierValue = built.identifier?.[0]?.value as string;
    const existing = await store.findByIdentifier(identifierValue);
    if (existing)
      return {
        draft: existing.document,
        provenance: existing.provenance,
        created: false,
        mode: existing.mode,
      };
    const id = randomUUID();
    const document: DocumentReference = { ...built, id };
    const provenance = buildDraftProvenance(
      content,
      `DocumentReference/${id}`,
      deviceReference,
      now,
      this.#profiles,
    );
    await store.insert({
      id,
      mode: this.#mode,
      identifierValue,
      patientId: patient.id as string,
      encounterId: encounter.id as string,
      kind: content.kind,
      status: 'preliminary',
      title: content.title,
      text: content.text,
      citations: [...content.sources.keys()],
      flagged: content.verification.flagged,
      document,
      provenance,
      device,
      events: [],
      ...(replaces ? { replaces } : {}),
      createdAt: now.toISOString(),
      updatedAt: now.toISOString(),
    });
    return { draft: document, provenance, created: true, mode: this.#mode };
  }

  /**
   * The draft this encounter already has of this kind, at its current generation: the one a later version of
   * the encounter refreshes or notes a change on. Undefined when there is none, or when a regeneration is
   * pending (that makes a new draft instead). When several match (drafts of different engines), the newest.
   */
  async currentDraft(
    patient: Patient,
    encounter: Encounter,
    kind: string,
  ): Promise<ExistingDraft | undefined> {
    const encounterId = encounter.id as string;
    if (await this.#store?.pendingRegeneration(encounterId, kind)) return undefined;
    if (this.#mode === 'write') {
      const generation = (await this.#store?.generation(encounterId, kind)) ?? 0;
      const documents = await this.#client.search<DocumentReference>('DocumentReference', {
        patient: `Patient/${patient.id}`,
        encounter: `Encounter/${encounterId}`,
      });
      const [document] = documents
        .filter(
          (candidate) =>
            candidate.status !== 'superseded' &&
            isDraftOf(candidate, this.#identifierSystem, encounterId, kind, generation),
        )
        .sort((left, right) => (right.date ?? '').localeCompare(left.date ?? ''));
      return document ? ehrDraft(document) : undefined;
    }
    const [stored] = (await (this.#store as DraftStore).listByPatient(patient.id as string))
      .filter(
        (draft) => draft.encounterId === encounterId && draft.kind === kind && draft.status !== 'superseded',
      )
      .sort((left, right) => right.createdAt.localeCompare(left.createdAt));
    return stored ? storedDraft(stored) : undefined;
  }

  /**
   * Rewrites a draft nobody has touched with the text of a later version of its encounter: a new version of
   * the same DocumentReference (PUT with If-Match on the version read) and an AI Provenance for it, in one
   * transaction where the server takes them; in the store, a replace conditional on its last change. When the
   * draft changed in between (412, or the store's check), it is read again: if a clinician has had a hand in
   * it now, nothing is written and the caller is told so; the clinician's change always wins.
   */
  async refresh(
    existing: ExistingDraft,
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now = new Date(),
  ): Promise<RefreshResult> {
    let current = existing;
    for (let attempt = 1; attempt <= refreshAttempts; attempt++) {
      if (current.touched) return { outcome: 'touched', existing: current };
      if (writtenFromLaterEncounter(current.basis, content.basis)) return { outcome: 'superseded' };
      const written =
        current.location.mode === 'write'
          ? await this.#refreshInEhr(current, content, patient, encounter, now)
          : await this.#refreshInStore(current, content, patient, encounter, now);
      if (written) return { outcome: 'refreshed', written };
      const reread = await this.#reread(current);
      if (!reread) throw outcomeError('not-found', 'the draft being refreshed is gone', 404);
      if (!reread.touched && reread.basis?.encounterVersion !== current.basis?.encounterVersion) {
        // Another refresh landed in between: for this same version (a retried request whose first answer was
        // lost, or a duplicate job), the draft already says what this one would.
        if (reread.basis?.encounterVersion === content.basis?.encounterVersion)
          return {
            outcome: 'refreshed',
            written: {
              draft: reread.document,
              provenance: undefined,
              created: false,
              mode: reread.location.mode,
            },
          };
        // Another job's, for a later version of the encounter: that text stands.
        if (writtenFromLaterEncounter(reread.basis, content.basis)) return { outcome: 'superseded' };
      }
      current = reread;
    }
    throw outcomeError(
      'conflict',
      `the draft kept changing while it was being refreshed (${refreshAttempts} attempts); the job will retry`,
      409,
    );
  }

  /**
   * Keeps, in the service's store, what changed in the record since a draft a clinician has had a hand in
   * was written. Not on the DocumentReference: a new version there would make the clinician's open edit
   * fail its own version check, and a signed note's versions are the clinician's. False without a store.
   */
  async noteRecordChange(existing: ExistingDraft, change: RecordChange): Promise<boolean> {
    if (!this.#store) return false;
    const noted = (await this.#store.recordChanges([existing.location.id])).get(existing.location.id);
    // A job holding an older version of the encounter does not replace what a later version's job noted.
    if (isLater(noted?.encounterUpdated, change.encounterUpdated)) return false;
    await this.#store.noteRecordChange(existing.location.id, change);
    return true;
  }

  /**
   * For servers without transactions: the draft's current version gets its AI Provenance if an earlier run
   * wrote the draft and failed before the Provenance (built from the draft's own record, never this run's).
   */
  async completeProvenance(existing: ExistingDraft, now = new Date()): Promise<void> {
    if (existing.location.mode !== 'write' || this.#transactions || existing.touched) return;
    await this.#ensureProvenanceFromOwnRecord(existing.document, now);
  }

  async #reread(existing: ExistingDraft): Promise<ExistingDraft | undefined> {
    if (existing.location.mode === 'write') {
      try {
        return ehrDraft(
          await this.#client.read<DocumentReference>('DocumentReference', existing.location.id),
        );
      } catch (error) {
        if (error instanceof OperationOutcomeError && (error.status === 404 || error.status === 410))
          return undefined;
        throw error;
      }
    }
    const stored = await (this.#store as DraftStore).get(existing.location.id);
    return stored ? storedDraft(stored) : undefined;
  }

  /** The refreshed draft as the EHR should hold it; its identity (id, identifier, creation date, relations) stays. */
  #refreshedDocument(
    current: DocumentReference,
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    deviceReference: string,
    now: Date,
  ): DocumentReference {
    const built = buildDraftDocumentReference(content, {
      patient,
      encounter,
      identifierSystem: this.#identifierSystem,
      deviceReference,
      now,
      refreshedAt: now,
    });
    const { relatesTo: _built, ...rest } = built;
    const document: DocumentReference = {
      ...rest,
      id: current.id,
      identifier: current.identifier,
      date: current.date ?? built.date,
      ...(current.relatesTo ? { relatesTo: current.relatesTo } : {}),
    };
    assertPreliminary(document);
    return document;
  }

  /** Undefined when the draft changed since it was read (412 or 409): the caller reads it again. */
  async #refreshInEhr(
    existing: ExistingDraft,
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now: Date,
  ): Promise<WrittenDraft | undefined> {
    const current = existing.document;
    const versionId = current.meta?.versionId;
    // Without a version there is no If-Match, and a clinician's concurrent edit could be overwritten.
    if (!versionId)
      throw outcomeError(
        'not-supported',
        'the FHIR server gives drafts no versionId: cannot refresh safely',
        422,
      );
    const revisionOf = versionedReference(current);
    try {
      if (this.#transactions) {
        const [documentResult, provenanceResult] = await this.#transactionWithDevice(
          content.engine,
          (deviceReference) => [
            {
              resource: this.#refreshedDocument(current, content, patient, encounter, deviceReference, now),
              request: {
                method: 'PUT',
                url: `DocumentReference/${current.id}`,
                ifMatch: `W/"${versionId}"`,
              },
            },
            {
              fullUrl: `urn:uuid:${randomUUID()}`,
              // The new version's id is the server's to assign: the target is the draft, and `revision` names
              // the version this one rewrote, which pins the Provenance to the version that follows it.
              resource: buildDraftProvenance(
                content,
                `DocumentReference/${current.id}`,
                deviceReference,
                now,
                {
                  ...this.#profiles,
                  revisionOf,
                },
              ),
              request: { method: 'POST', url: 'Provenance' },
            },
          ],
        );
        return {
          draft: documentResult.resource as DocumentReference,
          provenance: provenanceResult.resource as Provenance,
          created: false,
          mode: 'write',
        };
      }
      // The version being rewritten gets its own Provenance first, if an earlier run left it without one.
      await this.#ensureProvenanceFromOwnRecord(current, now);
      const deviceReference = await this.ensureDevice(content.engine);
      const document = this.#refreshedDocument(current, content, patient, encounter, deviceReference, now);
      const updated = await this.#client.update(document, { ifMatchVersion: versionId });
      const { resource: provenance } = await this.#client.create(
        buildDraftProvenance(content, versionedReference(updated), deviceReference, now, {
          ...this.#profiles,
          revisionOf,
        }),
        { ifNoneExist: `target=${encodeURIComponent(versionedReference(updated))}` },
      );
      return { draft: updated, provenance, created: false, mode: 'write' };
    } catch (error) {
      if (error instanceof OperationOutcomeError && (error.status === 412 || error.status === 409))
        return undefined;
      throw error;
    }
  }

  /** Undefined when the stored draft changed since it was read: the caller reads it again. */
  async #refreshInStore(
    existing: ExistingDraft,
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now: Date,
  ): Promise<WrittenDraft | undefined> {
    const store = this.#store as DraftStore;
    const stored = existing.stored as StoredDraft;
    const deviceReference = `Device/${deviceIdFor(content.engine)}`;
    const document = this.#refreshedDocument(
      stored.document,
      content,
      patient,
      encounter,
      deviceReference,
      now,
    );
    const provenance = buildDraftProvenance(
      content,
      `DocumentReference/${stored.id}`,
      deviceReference,
      now,
      this.#profiles,
    );
    let updatedAt = now.toISOString();
    // The store's optimistic check compares this stamp: it must move even within one millisecond.
    if (updatedAt <= stored.updatedAt) updatedAt = new Date(Date.parse(stored.updatedAt) + 1).toISOString();
    const next: StoredDraft = {
      ...stored,
      title: content.title,
      text: content.text,
      citations: [...content.sources.keys()],
      flagged: content.verification.flagged,
      document,
      provenance,
      // Kept for the record: what each earlier text was made from.
      earlierProvenances: [...(stored.earlierProvenances ?? []), stored.provenance],
      device: buildDevice(content.engine, this.#identifierSystem, this.#profiles),
      updatedAt,
    };
    if (!(await store.replace(next, stored.updatedAt))) return undefined;
    return { draft: document, provenance, created: false, mode: stored.mode };
  }

  /** The AI Provenance of the draft's current version, written from the draft's own record if it has none. */
  async #ensureProvenanceFromOwnRecord(draft: DocumentReference, now: Date): Promise<Provenance> {
    // A first version's Provenance may name the draft without a version; servers differ in whether a plain
    // reference matches a versioned target, so ask for both. A refreshed version's is always versioned.
    const targets = [
      ...(draftBasisOf(draft)?.refreshedAt ? [] : [`DocumentReference/${draft.id}`]),
      versionedReference(draft),
    ];
    const existing = await this.#client.search<Provenance>('Provenance', { target: targets.join(',') });
    if (existing.length > 0) return existing[0];
    const author = draft.author?.find((candidate) => candidate.reference?.startsWith('Device/'))?.reference;
    if (!author) throw outcomeError('invalid', `DocumentReference/${draft.id} names no author Device`, 422);
    const { resource } = await this.#client.create(
      buildDraftProvenance(
        draftProvenanceBasis(draft),
        versionedReference(draft),
        author,
        now,
        this.#profiles,
      ),
      { ifNoneExist: `target=${encodeURIComponent(versionedReference(draft))}` },
    );
    return resource;
  }

  /** The replaced draft becomes superseded, unless a clinician signed or rejected it meanwhile. */
  async #supersede(regeneration: RegenerationRequest, written: WrittenDraft): Promise<void> {
    const { replaces } = regeneration;
    if (replaces.mode === 'write') {
      const old = await this.#client.read<DocumentReference>('DocumentReference', replaces.id);
      if (old.status !== 'current' || old.docStatus !== 'preliminary') return;
      await this.#client.update<DocumentReference>(
        { ...old, status: 'superseded' },
        { ifMatchVersion: old.meta?.versionId },
      );
      return;
    }
    const store = this.#store as DraftStore;
    const old = await store.get(replaces.id);
    if (old?.status !== 'preliminary') return;
    await store.replace(
      {
        ...old,
        status: 'superseded',
        document: { ...old.document, status: 'superseded' },
        supersededBy: written.draft.id,
        updatedAt: new Date().toISOString(),
      },
      old.updatedAt,
    );
  }
}

/** The Device by its identifier (conditional create): repeated calls find the first one. */
export async function ensureDeviceIn(client: FhirClient, device: Device): Promise<string> {
  const { resource } = await client.create(device, { ifNoneExist: identifierCondition(device) });
  return `Device/${resource.id}`;
}

function isLater(candidate: string | undefined, reference: string | undefined): boolean {
  const left = Date.parse(candidate ?? '');
  const right = Date.parse(reference ?? '');
  return Number.isFinite(left) && Number.isFinite(right) && left > right;
}

/** One of this service's drafts for the encounter and kind, at the given generation (any engine). */
function isDraftOf(
  document: DocumentReference,
  identifierSystem: string,
  encounterId: string,
  kind: string,
  generation: number,
): boolean {
  const value = document.identifier?.find((identifier) => identifier.system === identifierSystem)?.value;
  if (!value?.startsWith(`${encounterId}:${kind}:`)) return false;
  const suffix = /:g(\d+)$/.exec(value);
  return (suffix ? Number(suffix[1]) : 0) === generation;
}

function ehrDraft(document: DocumentReference): ExistingDraft {
  return {
    location: { mode: 'write', id: document.id as string },
    document,
    basis: draftBasisOf(document),
    // Without a versionId there is no If-Match to protect a clinician's concurrent edit: never rewritten.
    touched: touchedSinceDrafted(document) || !document.meta?.versionId,
  };
}

function storedDraft(stored: StoredDraft): ExistingDraft {
  return {
    location: { mode: stored.mode, id: stored.id },
    document: stored.document,
    stored,
    basis: draftBasisOf(stored.document),
    // The store records every clinician action as an event, in the same write as the change itself.
    touched:
      stored.status !== 'preliminary' || stored.events.length > 0 || touchedSinceDrafted(stored.document),
  };
}

/** The If-None-Exist search on a resource's first identifier. */
function identifierCondition(resource: Device | DocumentReference): string {
  const identifier = resource.identifier?.[0];
  return `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`;
}

function versionedReference(document: DocumentReference): string {
  const reference = `DocumentReference/${document.id}`;
  return document.meta?.versionId ? `${reference}/_history/${document.meta.versionId}` : reference;
}

function assertPreliminary(document: DocumentReference): void {
  // The pipeline can only ever produce drafts; a final note needs a clinician's sign-off.
  if (document.docStatus !== 'preliminary')
    throw new Error('the draft writer only writes preliminary drafts');
}
