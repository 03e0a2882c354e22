import { z } from 'zod';
import type { NudgeInput } from './draft-engine.ts';
import type { JsonSchemaObject } from './grammar-schema.ts';

/**
 * What the model must answer at the extraction and write-up stages: zod schemas to validate with,
 * and grammar-safe JSON schemas to constrain decoding (citations as an enum of what the run showed,
 * strings and arrays capped so the worst-case answer fits the output tokens).
 */
export interface OutputLimits {
  maxFactsPerChunk: number;
  maxFactLength: number;
  maxLinesPerSection: number;
  maxLineLength: number;
  maxCitationsPerLine: number;
  /** Cap for any free string the grammar generates (tool arguments, focus). */
  maxStringLength: number;
}

export const defaultOutputLimits: OutputLimits = {
  maxFactsPerChunk: 10,
  maxFactLength: 300,
  maxLinesPerSection: 6,
  maxLineLength: 300,
  maxCitationsPerLine: 4,
  maxStringLength: 200,
};

/** Tokens a citation costs at most in generated JSON, for sizing outputs. */
export const tokensPerCitation = 16;
/** When a run's citable set is larger than this, citations are bounded strings instead of an enum. */
const maximumCitationEnum = 400;
export interface Fact {
  fact: string;
  citations: string[];
}

function citationSchema(references: string[]): Record<string, unknown> {
  return references.length > 0 && references.length <= maximumCitationEnum
    ? { enum: references }
    : { type: 'string', maxLength: 80 };
}

export function factsSchemas(references: string[], maxFacts: number, limits: OutputLimits) {
  const schema = z.object({
    facts: z
      .array(
        z.object({
          fact: z.string().min(1).max(limits.maxFactLength),
          citations: z.array(z.string().max(100)).min(1).max(limits.maxCitationsPerLine),
        }),
      )
      .max(maxFacts),
  });
  const jsonSchema: JsonSchemaObject = {
    type: 'object',
    properties: {
      facts: {
        type: 'array',
        minItems: 1,
        maxItems: maxFacts,
        items: {
          type: 'object',
          properties: {
            fact: { type: 'string', minLength: 1, maxLength: limits.maxFactLength },
            citations: {
              type: 'array',
              items: citationSchema(references),
              minItems: 1,
              maxItems: limits.maxCitationsPerLine,
            },
          },
          required: ['fact', 'citations'],
          additionalProperties: false,
        },
      },
    },
    required: ['facts'],
    additionalProperties: false,
  };
  return { schema, jsonSchema };
}

export function writeUpSchemas(
  headings: string[],
  references: string[],
  ruleIds: string[],
  limits: OutputLimits,
) {
  const line = z.object({
    text: z.string().min(1).max(limits.maxLineLength),
    citations: z.array(z.string().max(100)).max(limits.maxCitationsPerLine),
  });
  const schema = z.object({
    sections: z
      .array(
        z.object({
          heading: z.enum(headings as [string, ...string[]]),
          lines: z.array(line).max(limits.maxLinesPerSection),
        }),
      )
      .max(headings.length),
    suggestions: z
      .array(z.object({ ruleId: z.string(), text: z.string().max(limits.maxLineLength) }))
      .max(ruleIds.length),
  });
  const jsonSchema: JsonSchemaObject = {
    type: 'object',
    properties: {
      sections: {
        type: 'array',
        minItems: 1,
        maxItems: headings.length,
        items: {
          type: 'object',
          properties: {
            heading: { enum: headings },
            lines: {
              type: 'array',
              minItems: 1,
              maxItems: limits.maxLinesPerSection,
              items: {
                type: 'object',
                properties: {
                  text: { type: 'string', minLength: 1, maxLength: limits.maxLineLength },
                  citations: {
                    type: 'array',
                    items: citationSchema(references),
                    minItems: 1,
                    maxItems: limits.maxCitationsPerLine,
                  },
                },
                required: ['text', 'citations'],
                additionalProperties: false,
              },
            },
          },
          required: ['heading', 'lines'],
          additionalProperties: false,
        },
      },
      suggestions: {
        type: 'array',
        maxItems: ruleIds.length,
        items: ruleIds.length
          ? {
              type: 'object',
              properties: {
                ruleId: { enum: ruleIds },
                text: { type: 'string', minLength: 1, maxLength: limits.maxLineLength },
              },
              required: ['ruleId', 'text'],
              additionalProperties: false,
            }
          : { type: 'null' },
      },
    },
    required: ['sections', 'suggestions'],
    additionalProperties: false,
  };
  return { schema, jsonSchema };
}

/** The section every draft with nudges ends with; the review app and nudge outcomes look for it. */
export const suggestedActionsHeading = 'Suggested actions';

/**
 * The heading lines a model draft's template emits: one per heading of the kind's prompt, then the
 * suggested actions. The write-up writes exactly these, and they are the verifier's allow-list.
 */
export function modelHeadingLines(headings: readonly string[]): string[] {
  return [...headings, suggestedActionsHeading].map((heading) => `## ${heading}`);
}

export function factLines(facts: Fact[]): string {
  return facts
    .map((fact) => `- ${fact.fact} ${fact.citations.map((citation) => `[${citation}]`).join(' ')}`)
    .join('\n');
}

export function nudgeLines(nudges: NudgeInput[]): string {
  if (nudges.length === 0) return '(none)';
  return nudges
    .map(
      (nudge) =>
        `- ruleId ${nudge.ruleId} (${nudge.severity}): ${nudge.title}. Recommendation (${nudge.guideline.label}): ${nudge.guideline.recommendation}. Suggested action: ${nudge.suggestedAction}. Evidence: ${nudge.evidence.map((reference) => `[${reference}]`).join(' ')}`,
    )
    .join('\n');
}
