import type { Device, DocumentReference, Encounter, Patient, Provenance } from 'fhir/r4.js';
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
  /** `Type/id` -> versionId of every resource the draft cites. */
  sources: Map<string, string | undefined>;
  verification: { cited: number; removed: number; flagged: boolean };
  /** Rules whose nudges the draft carries (Provenance derivations). */
  rules?: { id: string; version: string }[];
}

export const aiAssertedLabel = {
  system: 'http://terminology.hl7.org/CodeSystem/v3-ObservationValue',
  code: 'AIAST',
  display: 'Artificial Intelligence asserted',
};

const verificationExtensionUrl = 'urn:ehr-draft-agent:fhir:StructureDefinition/citation-verification';

export function draftIdentifierValue(
  encounterId: string,
  kind: string,
  engine: DraftContent['engine'],
): string {
  return `${encounterId}|${kind}|${engine.id}-${engine.version}`;
}

export function deviceIdFor(engine: DraftContent['engine']): string {
  return `ehr-draft-agent-${engine.id}`.replace(/[^A-Za-z0-9\-.]/g, '-').slice(0, 64);
}

export function buildDevice(engine: DraftContent['engine'], identifierSystem: string): Device {
  const isModel = engine.id !== 'extractive';
  return {
    resourceType: 'Device',
    identifier: [{ system: `${identifierSystem}:device`, value: deviceIdFor(engine) }],
    type: isModel
      ? {
          coding: [
            {
              system: 'http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS',
              code: 'Artificial-Intelligence',
            },
          ],
        }
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
  },
): DocumentReference {
  const { encounter } = context;
  const flaggedNote = content.verification.flagged
    ? ' Some unsupported statements were removed: review with care.'
    : '';
  return {
    resourceType: 'DocumentReference',
    meta: { security: [aiAssertedLabel] },
    identifier: [
      {
        system: context.identifierSystem,
        value: draftIdentifierValue(encounter.id as string, content.kind, content.engine),
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
    context: {
      encounter: [{ reference: `Encounter/${encounter.id}` }],
      ...(encounter.period ? { period: encounter.period } : {}),
    },
  };
}

export function buildDraftProvenance(
  content: DraftContent,
  draft: DocumentReference,
  deviceReference: string,
  now: Date,
): Provenance {
  const versioned = (reference: string, versionId: string | undefined) =>
    versionId ? `${reference}/_history/${versionId}` : reference;
  const promptText = content.prompt?.rendered;
  return {
    resourceType: 'Provenance',
    meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance'] },
    ...(content.prompt
      ? {
          contained: [
            promptDocument({
              id: 'prompt',
              status: 'current',
              identifier: [
                {
                  system: 'urn:ehr-draft-agent:prompt',
                  value: `${content.prompt.id}@${content.prompt.version}`,
                },
              ],
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
                    title: `${content.prompt.id} v${content.prompt.version}`,
                    ...(promptText ? { data: Buffer.from(promptText, 'utf8').toString('base64') } : {}),
                  },
                },
              ],
            }),
          ],
        }
      : {}),
    extension: [
      {
        url: verificationExtensionUrl,
        extension: [
          { url: 'cited', valueInteger: content.verification.cited },
          { url: 'removed', valueInteger: content.verification.removed },
          { url: 'flagged', valueBoolean: content.verification.flagged },
        ],
      },
    ],
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
        role: [
          {
            coding: [
              {
                system: 'http://hl7.org/fhir/uv/aitransparency/CodeSystem/AIdeviceTypeCS',
                code: 'Artificial-Intelligence',
              },
            ],
          },
        ],
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
        what: { display: `rule ${rule.id} v${rule.version}` },
      })),
      ...(content.prompt ? [{ role: 'derivation' as const, what: { reference: '#prompt' } }] : []),
    ],
  };
}

// Contained resources are typed as the base Resource; this keeps the prompt's own fields checked.
const promptDocument = (document: Omit<DocumentReference, 'resourceType'>) =>
  ({ resourceType: 'DocumentReference', ...document }) as DocumentReference;

export interface WrittenDraft {
  draft: DocumentReference;
  provenance: Provenance | undefined;
  /** False when the draft already existed (a repeated event). */
  created: boolean;
}

/** Writes the draft (conditional create), then its Provenance if the draft has none yet: safe to repeat after a crash. */
export class DraftNoteWriter {
  readonly #client: FhirClient;
  readonly #identifierSystem: string;
  readonly #deviceReferences = new Map<string, string>();

  constructor(client: FhirClient, identifierSystem: string) {
    this.#client = client;
    this.#identifierSystem = identifierSystem;
  }

  async #deviceReference(engine: DraftContent['engine']): Promise<string> {
    const cached = this.#deviceReferences.get(engine.id);
    if (cached) return cached;
    const device = buildDevice(engine, this.#identifierSystem);
    const identifier = device.identifier?.[0];
    const { resource } = await this.#client.create(device, {
      ifNoneExist: `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`,
    });
    const reference = `Device/${resource.id}`;
    this.#deviceReferences.set(engine.id, reference);
    return reference;
  }

  async write(
    content: DraftContent,
    patient: Patient,
    encounter: Encounter,
    now = new Date(),
  ): Promise<WrittenDraft> {
    const deviceReference = await this.#deviceReference(content.engine);
    const document = buildDraftDocumentReference(content, {
      patient,
      encounter,
      identifierSystem: this.#identifierSystem,
      deviceReference,
      now,
    });
    const identifier = document.identifier?.[0];
    const { resource: draft, created } = await this.#client.create(document, {
      ifNoneExist: `identifier=${encodeURIComponent(`${identifier?.system}|${identifier?.value}`)}`,
    });
    const existing = await this.#client.search<Provenance>('Provenance', {
      target: `DocumentReference/${draft.id}`,
    });
    if (existing.length > 0) return { draft, provenance: existing[0], created };
    const { resource: provenance } = await this.#client.create(
      buildDraftProvenance(content, draft, deviceReference, now),
    );
    return { draft, provenance, created };
  }
}
