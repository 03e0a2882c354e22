import type { DocumentReference, FhirResource } from 'fhir/r4.js';
import { textAttachment } from '../fhir/note-text.ts';
import type { ClinicalNote, PatientRecord } from '../fhir/patient-record.ts';
import {
  estimateTokens,
  type GenerateRequest,
  type GenerateResult,
  type ModelProvider,
} from '../src/model/provider.ts';
import { recordFromResources } from '../src/rules/record-from-bundle.ts';

/**
 * Pieces of the context-packing benchmark: a stand-in model that follows the step protocol (the
 * benchmark measures what is sent, not what a model writes) and PatientRecords from exported resources.
 */
export interface MeasuredCall {
  schemaName: string | undefined;
  promptCharacters: number;
  promptTokens: number;
  maxTokens: number;
  text: string;
}

const citation = /\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/g;

/** Answers every stage validly: navigation ends at once, extraction cites its chunk, the write-up cites its prompt. */
export class MeasuringProvider implements ModelProvider {
  readonly provider = 'measuring';
  readonly modelId = 'measuring-stand-in';
  readonly contextSize: number;
  readonly calls: MeasuredCall[] = [];
  /** Navigation steps that read a note (the newest listed) before the final step. */
  private readonly noteReads: number;

  constructor(contextSize: number, options: { noteReads?: number } = {}) {
    this.contextSize = contextSize;
    this.noteReads = options.noteReads ?? 0;
  }

  countTokens(text: string): number {
    return estimateTokens(text);
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    const text = request.messages.map((message) => message.content).join('\n');
    const promptTokens = request.messages.reduce(
      (sum, message) => sum + this.countTokens(message.content) + 6,
      0,
    );
    this.calls.push({
      schemaName: request.schemaName,
      promptCharacters: text.length,
      promptTokens,
      maxTokens: request.maxTokens,
      text,
    });
    const content = this.reply(request, text);
    return {
      content,
      finishReason: 'stop',
      usage: { promptTokens, completionTokens: this.countTokens(content) },
    };
  }

  private reply(request: GenerateRequest, text: string): string {
    const shown = [...new Set([...text.matchAll(citation)].map((match) => match[1]))];
    const schema = request.jsonSchema as { properties?: Record<string, { maxItems?: number }> } | undefined;
    switch (request.schemaName) {
      case 'tool_step': {
        const stepsSoFar = this.calls.filter((call) => call.schemaName === 'tool_step').length - 1;
        const notes = shown.filter((reference) => reference.startsWith('DocumentReference/'));
        if (stepsSoFar < this.noteReads && notes[stepsSoFar]) {
          return JSON.stringify({ action: 'call', tool: 'read_note', args: { id: notes[stepsSoFar] } });
        }
        return JSON.stringify({
          action: 'call',
          tool: 'reading_list',
          args: { read: notes.slice(0, 2), focus: '' },
        });
      }
      case 'facts': {
        const sources = [
          ...new Set(
            [...text.matchAll(/^\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/gm)].map((match) => match[1]),
          ),
        ];
        const maxFacts = schema?.properties?.facts?.maxItems ?? 3;
        return JSON.stringify({
          facts: sources.slice(0, maxFacts).map((source) => ({
            fact: 'A finding written in this note, in about one line of text.',
            citations: [source],
          })),
        });
      }
      case 'draft': {
        const headings = (
          request.jsonSchema as {
            properties: { sections: { items: { properties: { heading: { enum: string[] } } } } };
          }
        ).properties.sections.items.properties.heading.enum;
        return JSON.stringify({
          sections: [
            {
              heading: headings[1] ?? headings[0],
              lines: shown.slice(0, 6).map((reference) => ({ text: 'Finding.', citations: [reference] })),
            },
          ],
          suggestions: [],
        });
      }
      default:
        return '{}';
    }
  }

  async close(): Promise<void> {}
}

function decodeNotes(documents: DocumentReference[]): ClinicalNote[] {
  return documents.flatMap((document) => {
    const attachment = textAttachment(document);
    if (!attachment?.data || !document.id) return [];
    return [
      {
        reference: `DocumentReference/${document.id}`,
        id: document.id,
        versionId: document.meta?.versionId,
        date: document.date ?? document.context?.period?.start,
        title: document.description ?? document.type?.text ?? document.type?.coding?.[0]?.display ?? 'Note',
        text: Buffer.from(attachment.data, 'base64').toString('utf8'),
      },
    ];
  });
}

/** A record as retrieval would give it, with the encounter to summarise: the latest finished one with a note. */
export function recordWithNotes(
  resources: FhirResource[],
  kind: 'progress-summary' | 'previsit-briefing',
): PatientRecord {
  const base = recordFromResources(resources);
  const notes = decodeNotes(base.noteResources).sort((left, right) =>
    (left.date ?? '').localeCompare(right.date ?? ''),
  );
  let encounter = base.encounter;
  if (kind === 'progress-summary') {
    const noted = new Set(
      base.noteResources.flatMap((document) =>
        (document.context?.encounter ?? []).map((reference) => reference.reference),
      ),
    );
    const finished = base.encounters
      .filter((candidate) => candidate.status === 'finished' && noted.has(`Encounter/${candidate.id}`))
      .sort((left, right) => (right.period?.start ?? '').localeCompare(left.period?.start ?? ''));
    encounter = finished[0] ?? encounter;
  }
  return { ...base, encounter, notes };
}

/** Resources grouped by the patient they belong to (subject or patient reference). */
export function groupByPatient(resources: FhirResource[]): Map<string, FhirResource[]> {
  const groups = new Map<string, FhirResource[]>();
  for (const resource of resources) {
    const owner =
      resource.resourceType === 'Patient'
        ? `Patient/${resource.id}`
        : ((resource as { subject?: { reference?: string }; patient?: { reference?: string } }).subject
            ?.reference ?? (resource as { patient?: { reference?: string } }).patient?.reference);
    if (!owner?.startsWith('Patient/')) continue;
    const group = groups.get(owner) ?? [];
    group.push(resource);
    groups.set(owner, group);
  }
  return groups;
}
