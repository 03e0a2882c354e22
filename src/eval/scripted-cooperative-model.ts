import {
  estimateTokens,
  type GenerateRequest,
  type GenerateResult,
  type ModelProvider,
} from '../model/provider.ts';

/**
 * The scripted cooperative model: not a language model, a stand-in that follows the agents' protocol
 * and copies faithfully what its prompts show. Navigation asks, in its first reply, for every note and
 * result the manifest lists; extraction copies each material item's most telling sentences, citing the
 * item; the write-up restates the essentials and the facts it was given, each under its source. Its
 * recall therefore measures what the context packing let reach the model (an upper bound for a real
 * model on the same budget), not anyone's medical judgement. Calls are counted by stage, for the
 * benchmark's chunks + 2 bound.
 */
const citationAtStart = /^\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]\s*(.*)$/;

/** Words that mark a sentence as a change or a plan: what a summary must not drop. */
const telling =
  /\b(start|started|stop|stopped|increase|increased|decrease|decreased|refer|referred|because|new|discontinue|discontinued|switch|switched)\b/i;

/** Words that make a sentence with a number a result. */
const resultWords = /\b(A1c|HbA1c|BP|BMI|LDL|creatinine|potassium|K|Cr|PHQ-9|eGFR|glucose|labs?|vitals)\b/i;

interface Schema {
  properties?: Record<string, { maxItems?: number; items?: Schema; enum?: string[]; maxLength?: number }>;
  maxItems?: number;
  items?: Schema;
  enum?: string[];
}

function sentences(text: string): string[] {
  return (
    text
      .split(/\n+|(?<=[.!?])\s+(?=[A-Z0-9])/)
      .map((sentence) => sentence.replace(/^(?:[-*]|\d{1,2}\.)\s+/, '').trim())
      // Headers and labels carry no finding of their own.
      .filter(
        (sentence) =>
          sentence.length > 3 &&
          !sentence.endsWith(':') &&
          !/^(PROGRESS NOTE|Date:|TELEPHONE)/.test(sentence),
      )
  );
}

function score(sentence: string): number {
  const numeric = /\d/.test(sentence);
  return (telling.test(sentence) ? 4 : 0) + (numeric && resultWords.test(sentence) ? 2 : numeric ? 1 : 0);
}

function clip(text: string, maximum: number): string {
  return text.length <= maximum ? text : `${text.slice(0, maximum - 1).trimEnd()}`;
}

function lastUserText(request: GenerateRequest): string {
  return request.messages.filter((message) => message.role === 'user').at(-1)?.content ?? '';
}

/** `[Type/id] text` lines and blocks of a prompt, in order. */
function citedBlocks(text: string): { reference: string; text: string }[] {
  const blocks: { reference: string; text: string }[] = [];
  for (const line of text.split('\n')) {
    const match = line.match(citationAtStart);
    if (match) blocks.push({ reference: match[1], text: match[2] });
    else if (blocks.length > 0 && line.trim() !== '') blocks[blocks.length - 1].text += `\n${line}`;
  }
  return blocks;
}

export class ScriptedCooperativeModel implements ModelProvider {
  readonly provider = 'scripted-cooperative';
  readonly modelId = 'scripted-cooperative-model';
  readonly contextSize: number;
  /** Calls by schema name (tool_step, facts, facts_reduce, draft) since the last reset. */
  readonly callsByStage = new Map<string, number>();

  constructor(options: { contextSize?: number } = {}) {
    this.contextSize = options.contextSize ?? 16_384;
  }

  countTokens(text: string): number {
    return estimateTokens(text);
  }

  resetCounts(): void {
    this.callsByStage.clear();
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    const stage = request.schemaName ?? 'other';
    this.callsByStage.set(stage, (this.callsByStage.get(stage) ?? 0) + 1);
    const promptTokens = request.messages.reduce(
      (sum, message) => sum + this.countTokens(message.content) + 6,
      0,
    );
    const content = this.answer(request);
    return {
      content,
      finishReason: 'stop',
      usage: { promptTokens, completionTokens: this.countTokens(content) },
    };
  }

  /** The reply to one request, without counting it (what an inference server would answer). */
  answer(request: GenerateRequest): string {
    const schema = (request.jsonSchema ?? {}) as Schema;
    const text = lastUserText(request);
    switch (request.schemaName) {
      case 'tool_step': {
        const wanted = citedBlocks(request.messages.map((message) => message.content).join('\n'))
          .map((block) => block.reference)
          .filter((reference) => /^(DocumentReference|Observation)\//.test(reference));
        return JSON.stringify({
          action: 'call',
          tool: 'reading_list',
          args: { read: [...new Set(wanted)].slice(0, 24), focus: 'changes in treatment, plans and results' },
        });
      }
      case 'facts':
        return JSON.stringify({ facts: this.facts(text, schema) });
      case 'draft':
        return JSON.stringify(this.draft(text, schema));
      default:
        return '{}';
    }
  }

  private facts(text: string, schema: Schema): { fact: string; citations: string[] }[] {
    const maxFacts = schema.properties?.facts?.maxItems ?? 10;
    const maxLength = schema.properties?.facts?.items?.properties?.fact?.maxLength ?? 300;
    const materialAt = text.search(/^Material:\s*$/m);
    // The reduce stage shows facts as `- fact [Type/id]` lines: keep them, telling ones first.
    const blocks =
      materialAt >= 0
        ? citedBlocks(text.slice(materialAt))
        : [...text.matchAll(/^- (.+?) \[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/gm)].map((match) => ({
            reference: match[2],
            text: match[1],
          }));
    const candidates = blocks.flatMap((block, blockIndex) => {
      // A finding keeps its date: the note's, unless the sentence names its own.
      const date = block.text.match(/\d{4}-\d{2}-\d{2}/)?.[0];
      return sentences(block.text).map((sentence, sentenceIndex) => ({
        reference: block.reference,
        sentence: date && !/\d{4}-\d{2}-\d{2}/.test(sentence) ? `${date}: ${sentence}` : sentence,
        // Telling sentences first; then the earlier (newer) blocks; then the block's own order.
        rank: score(sentence) * 1000 - blockIndex * 10 - sentenceIndex / 100,
      }));
    });
    const chosen = candidates.sort((left, right) => right.rank - left.rank).slice(0, maxFacts);
    return chosen.map((candidate) => ({
      fact: clip(candidate.sentence, maxLength),
      citations: [candidate.reference],
    }));
  }

  private draft(text: string, schema: Schema) {
    const sectionSchema = schema.properties?.sections?.items;
    const headings = sectionSchema?.properties?.heading?.enum ?? ['Summary'];
    const maxLines = sectionSchema?.properties?.lines?.maxItems ?? 6;
    const maxLength = sectionSchema?.properties?.lines?.items?.properties?.text?.maxLength ?? 300;
    const heading = (pattern: RegExp) => headings.find((candidate) => pattern.test(candidate));
    const problems = heading(/problem|assessment|history|background/i) ?? headings[0];
    const medicines = heading(/medication/i) ?? problems;
    const results = heading(/result/i) ?? problems;
    const plans = heading(/plan|follow|change|recent/i) ?? headings.at(-1) ?? problems;
    const maxCitations = sectionSchema?.properties?.lines?.items?.properties?.citations?.maxItems ?? 4;
    const items = new Map<string, { text: string; reference: string }[]>();
    const add = (section: string, reference: string, line: string) => {
      const text = line.trim().replace(/[.;,]?$/, '.');
      items.set(section, [...(items.get(section) ?? []), { text, reference }]);
    };
    const essentials = text.slice(0, Math.max(0, text.indexOf('Facts from the record')));
    for (const block of citedBlocks(essentials)) {
      const section = block.reference.startsWith('MedicationRequest/') ? medicines : problems;
      add(section, block.reference, block.text.replace(/\s*\((active|on-hold)[^)]*\)\s*$/, ''));
    }
    // The facts run from their heading to the suggestions (which are worded below, never restated as facts).
    const factsStart = text.indexOf('Facts from the record');
    const suggestionsStart = text.indexOf('Suggestions to word', factsStart);
    const factsPart = text.slice(factsStart, suggestionsStart > factsStart ? suggestionsStart : undefined);
    for (const match of factsPart.matchAll(/^- (.+?) \[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/gm)) {
      const [, fact, reference] = match;
      const isResult = reference.startsWith('Observation/') || (resultWords.test(fact) && /\d/.test(fact));
      add(isResult && !telling.test(fact) ? results : plans, reference, fact);
    }
    // A section holds a few lines: when there is more to say, several sentences share a line (and its citations).
    const sections = headings.flatMap((candidate) => {
      const list = items.get(candidate) ?? [];
      if (list.length === 0) return [];
      const perLine = Math.min(maxCitations, Math.ceil(list.length / maxLines));
      const lines: { text: string; citations: string[] }[] = [];
      for (let index = 0; index < list.length && lines.length < maxLines; index += perLine) {
        const group = list.slice(index, index + perLine);
        lines.push({
          // One sentence (joined with semicolons), so the line's citations stay with what they support.
          text: clip(`${group.map((item) => item.text.replace(/\.$/, '')).join('; ')}.`, maxLength),
          citations: [...new Set(group.map((item) => item.reference))],
        });
      }
      return [{ heading: candidate, lines }];
    });
    const suggestions = [...text.matchAll(/^- ruleId (\S+) \([^)]*\): (.*?)\. Recommendation/gm)].map(
      (match) => ({ ruleId: match[1], text: clip(`${match[2]}.`, maxLength) }),
    );
    return {
      sections: sections.length ? sections : [{ heading: headings[0], lines: [] }],
      suggestions,
    };
  }

  async close(): Promise<void> {}
}
