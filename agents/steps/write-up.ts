import type { NudgeInput } from '../draft-engine.ts';
import {
  type Fact,
  factLines,
  nudgeLines,
  suggestedActionsHeading,
  writeUpSchemas,
} from '../output-schemas.ts';
import { type PromptTemplate, renderPrompt } from '../prompt-library.ts';
import { oneLine } from '../record-text.ts';
import { structuredCall } from '../structured-call.ts';
import type { StageContext } from './stage-context.ts';

/**
 * Step 5, write: one structured call words the draft from the facts, the essentials (active problems,
 * medications, allergies) and the nudges the rules decided, as sections of lines that each carry
 * their citations; code renders it as the kind's headings and one cited line per sentence. Every
 * nudge appears, in the model's words when it gave them, else the rule's.
 */
const referencePattern = /^[A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/;

/** Anything that could end a line of the draft, or hide text: a model's line is one line. */
const lineBreaking = /[\p{Cc}\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+/gu;

/**
 * Splits at sentence ends followed by a capital or digit; short abbreviations (Dr., St.) do not end a
 * sentence. The model's own `[Type/id]` text is kept as it is, so the verifier checks it.
 */
export function sentencesOf(text: string): string[] {
  const flat = text.replace(lineBreaking, ' ').trim();
  const sentences: string[] = [];
  let start = 0;
  for (const match of flat.matchAll(/[.!?]\s+(?=[A-Z0-9])/g)) {
    const end = (match.index ?? 0) + 1;
    const candidate = flat.slice(start, end).trim();
    if (/(?:^|\s)(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|No|vs|approx)\.$/i.test(candidate)) continue;
    sentences.push(candidate);
    start = end;
  }
  sentences.push(flat.slice(start).trim());
  return sentences.filter((sentence) => sentence !== '');
}

/** The kind prompt's section headings (the write-up's sections). */
export function kindHeadings(template: PromptTemplate): string[] {
  return template.headings ?? ['Summary'];
}

function writeUpPrompt(
  kindPrompt: PromptTemplate,
  input: { essentials: string[]; facts: string; nudges: NudgeInput[] },
): string {
  return renderPrompt(kindPrompt, {
    headings: kindHeadings(kindPrompt).join(', '),
    essentials: input.essentials.join('\n') || '(none recorded)',
    facts: input.facts,
    nudges: nudgeLines(input.nudges),
  });
}

/** Tokens the write-up's prompt takes besides the facts: what the reduce step must leave room for. */
export function writeUpOverhead(
  context: StageContext,
  input: { kindPrompt: PromptTemplate; essentials: string[]; nudges: NudgeInput[] },
): number {
  return context.countTokens(writeUpPrompt(input.kindPrompt, { ...input, facts: '' })) + 16;
}

export async function writeDraftText(
  context: StageContext,
  input: {
    kindPrompt: PromptTemplate;
    facts: Fact[];
    essentials: string[];
    nudges: NudgeInput[];
    /** What the run showed the model: the only citations decoding allows. */
    citable: readonly string[];
  },
): Promise<string> {
  const headings = kindHeadings(input.kindPrompt);
  const { schema, jsonSchema } = writeUpSchemas(
    headings,
    [...input.citable],
    input.nudges.map((nudge) => nudge.ruleId),
    context.limits,
  );
  const value = await structuredCall({
    model: context.chatModel,
    prompt: writeUpPrompt(input.kindPrompt, {
      essentials: input.essentials,
      facts: factLines(input.facts) || '(no facts were extracted)',
      nudges: input.nudges,
    }),
    schema,
    jsonSchema,
    schemaName: 'draft',
    maxTokens: context.maxTokens,
    signal: context.signal,
  });
  const lines: string[] = [];
  for (const heading of headings) {
    // A line with no words says nothing, whatever it cites.
    const sectionLines = value.sections
      .filter((section) => section.heading === heading)
      .flatMap((section) => section.lines)
      .filter((line) => line.text.trim() !== '');
    if (sectionLines.length === 0) continue;
    lines.push(`## ${heading}`);
    for (const line of sectionLines) {
      // A citation that is not a plain `Type/id` could carry text or line breaks of its own: a line
      // with one keeps none of its given citations, so the verifier removes it unless its text cites.
      const given = line.citations.every((citation) => referencePattern.test(citation)) ? line.citations : [];
      const citations = given.map((citation) => `[${citation}]`).join(' ');
      // Every sentence carries the citations the model gave its line, so the verifier checks each one.
      for (const sentence of sentencesOf(line.text)) {
        lines.push(`- ${sentence}${citations ? ` ${citations}` : ''}`);
      }
    }
    lines.push('');
  }
  if (input.nudges.length) {
    // Same heading and rule tag as the extractive engine: the review app and nudge outcomes read them.
    lines.push(`## ${suggestedActionsHeading}`);
    for (const nudge of input.nudges) {
      const worded = value.suggestions
        .find((suggestion) => suggestion.ruleId === nudge.ruleId)
        ?.text.replace(lineBreaking, ' ')
        .trim();
      // A rule's action may be filled from record values: inert, like any record text.
      const text = worded || oneLine(`${nudge.title}: ${nudge.suggestedAction}`, 400);
      const grade = nudge.guideline.grade ? `, grade ${nudge.guideline.grade}` : '';
      const evidence = nudge.evidence.map((reference) => `[${reference}]`).join(' ');
      lines.push(
        `- ${text} (${nudge.guideline.label}${grade}; rule ${nudge.ruleId} v${nudge.ruleVersion}) ${evidence}`.trim(),
      );
    }
  }
  return lines.join('\n');
}
