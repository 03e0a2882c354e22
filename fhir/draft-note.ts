import { randomUUID } from 'node:crypto';
import type { Device, DocumentReference, Encounter, Extension, Patient, Provenance } from 'fhir/r4.js';
import { encounterTypeText } from './display-labels.ts';
import type { DraftMode, DraftStore, RegenerationRequest } from './draft-store.ts';
import type { FhirClient } from './fhir-client.ts';

/**
 * Builds and writes the draft note: a US Core DocumentReference (LOINC 34133-9, clinical-note,
 * docStatus preliminary, AIAST security label) with a stable identifier, written by conditional
 * create so a repeated event never makes a second draft, and a Provenance naming the exact versions
 * of the resources the draft cites. This module knows FHIR only; what the text says comes from the
 * agents, handed in as plain data.
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
}

export const aiAssertedLabel = {
  system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue',
  code: 'AIAST',
  display: 'Artificial Intelligence asserted',
};

/** Stable per encounter, kind, engine and generation: a repeated event finds the same draft; a regeneration makes a new one. */
export function draftIdentifierValue(
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
export function buildDevice(engine: DraftContent['engine'], identifierSystem: string): Device {
  const isModel = engine.id !== 'extractive';
  return {
    resourceType: 'Device',
    ...(isModel
      ? {
          meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Device'] },
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
    },
  };
}

/**
 * The AI Provenance exactly as reference/shapes/ai-provenance.json (HL7 AI Transparency IG): the
 * prompt contained as an AIInputPrompt DocumentReference and named as a derivation, every cited
 * resource as a source at the exact version read, the rules as derivations. Rules are referenced
 * logically (identifier) because the EHR has no PlanDefinition for them, and servers that enforce
 * referential integrity (HAPI's default) refuse a reference to a resource they do not hold.
 */
export function buildDraftProvenance(
  content: DraftContent,
  draft: DocumentReference,
  deviceReference: string,
  now: Date,
): Provenance {
  const versioned = (reference: string, versionId: string | undefined) =>
    versionId ? `${reference}/_history/${versionId}` : reference;
  return {
    resourceType: 'Provenance',
    meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance'] },
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
    target: [{ reference: versioned(`DocumentReference/${draft.id}`, draft.meta?.versionId) }],
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
          identifier: { system: 'urn:ehr-draft-agent:rule', value: `${rule.id}@${rule.version}` },
          display: `rule ${rule.id} v${rule.version}`,
        },
      })),
      ...(content.prompt ? [{ role: 'derivation' as const, what: { reference: '#prompt' } }] : []),
    ],
  };
}

/** The prompt as the model saw it, headed by the template ids and versions so it can be traced to the files. */
function promptText(content: DraftContent): string {
  const templates = [content.prompt, ...(content.prompts ?? [])]
    .filter((prompt): prompt is { id: string; version: string } => Boolean(prompt))
    .map((prompt) => `${prompt.id}@${prompt.version}`);
  const header = `<!-- prompt templates: ${[...new Set(templates)].join(', ')} -->`;
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

export interface DraftNoteWriterOptions {
  /** write (default): to the EHR as preliminary; hold: kept in the store until sign-off; shadow: stored, never written. */
  mode?: DraftMode;
  /** Needed for hold and shadow, and for regeneration in any mode. */
  store?: DraftStore;
}

/**
 * Writes a draft where the site's mode says: to the EHR (conditional create, then its AI Provenance if
 * it has none yet: safe to repeat after a crash), or into the service's own store. A pending
 * regeneration for the encounter and kind makes a new generation that `relatesTo` replaces the old
 * draft, and the old one becomes superseded. The writer only ever writes preliminary drafts.
 */
export class DraftNoteWriter {
  readonly #client: FhirClient;
  readonly #identifierSystem: string;
  readonly #mode: DraftMode;
  readonly #store: DraftStore | undefined;
  readonly #deviceReferences = new Map<string, string>();

  constructor(client: FhirClient, identifierSystem: string, options: DraftNoteWriterOptions = {}) {
    this.#client = client;
    this.#identifierSystem = identifierSystem;
    this.#mode = options.mode ?? 'write';
    this.#store = options.store;
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
    const reference = await ensureDeviceIn(client, buildDevice(engine, this.#identifierSystem));
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
    const deviceReference = await this.ensureDevice(content.engine);
    const document = buildDraftDocumentReference(content, {
      patient,
      encounter,
      identifierSystem: this.#identifierSystem,
      deviceReference,
      now,
      generation,
      replaces:
        regeneration?.replaces.mode === 'write' ? `DocumentReference/${regeneration.replaces.id}` : undefined,
    });
    assertPreliminary(document);
    const identifier = document.identifier?.[0];
    const { resource: draft, created } = await this.#client.create(document, {
      ifNoneExist: `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`,
    });
    if (!created) {
      // A repeated event (or a retry after a crash): the Provenance may already be there. Servers
      // differ in whether a plain reference matches a versioned target, so ask for both.
      const existing = await this.#client.search<Provenance>('Provenance', {
        target: [`DocumentReference/${draft.id}`, versionedReference(draft)].join(','),
      });
      if (existing.length > 0) return { draft, provenance: existing[0], created, mode: 'write' };
    }
    // Conditional on its target too: a retried POST whose answer was lost, or a second worker holding the
    // same job after a lease ran out, finds the first Provenance instead of writing another.
    const { resource: provenance } = await this.#client.create(
      buildDraftProvenance(content, draft, deviceReference, now),
      { ifNoneExist: `target=${encodeURIComponent(versionedReference(draft))}` },
    );
    return { draft, provenance, created, mode: 'write' };
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
    const device = buildDevice(content.engine, this.#identifierSystem);
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
    const provenance = buildDraftProvenance(content, document, deviceReference, now);
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
  const identifier = device.identifier?.[0];
  const { resource } = await client.create(device, {
    ifNoneExist: `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`,
  });
  return `Device/${resource.id}`;
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
