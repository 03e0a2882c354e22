import {
  type ChatMessage,
  estimateTokens,
  type GenerateRequest,
  type GenerateResult,
  ModelError,
  type ModelProvider,
} from '../../src/model/provider.ts';

/**
 * A test double for a model backend: records every call and answers from a script. A script step
 * is either a fixed reply or a function of the request (so a test can answer by stage, looking at
 * `schemaName`, and pick citations from the prompt it was given).
 */
export type ScriptedReply = string | ((request: GenerateRequest, call: number) => string);

export interface RecordedCall {
  schemaName: string | undefined;
  messages: ChatMessage[];
  promptCharacters: number;
  promptTokens: number;
  maxTokens: number;
  jsonSchema: Record<string, unknown> | undefined;
}

export class ScriptedProvider implements ModelProvider {
  readonly provider = 'scripted';
  readonly modelId: string;
  readonly contextSize: number;
  readonly calls: RecordedCall[] = [];
  private readonly script: ScriptedReply[];
  private readonly fallback: ScriptedReply | undefined;
  private readonly charactersPerToken: number;

  constructor(options: {
    script?: ScriptedReply[];
    fallback?: ScriptedReply;
    contextSize?: number;
    modelId?: string;
    /** Unset: the providers' estimate (three). Lower makes every text cost more tokens. */
    charactersPerToken?: number;
  }) {
    this.charactersPerToken = options.charactersPerToken ?? 0;
    this.script = [...(options.script ?? [])];
    this.fallback = options.fallback;
    this.contextSize = options.contextSize ?? 16_384;
    this.modelId = options.modelId ?? 'scripted-medgemma';
  }

  countTokens(text: string): number {
    return this.charactersPerToken ? Math.ceil(text.length / this.charactersPerToken) : estimateTokens(text);
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    const promptTokens = request.messages.reduce(
      (sum, message) => sum + this.countTokens(message.content) + 6,
      0,
    );
    this.calls.push({
      schemaName: request.schemaName,
      messages: request.messages.map((message) => ({ ...message })),
      promptCharacters: request.messages.reduce((sum, message) => sum + message.content.length, 0),
      promptTokens,
      maxTokens: request.maxTokens,
      jsonSchema: request.jsonSchema,
    });
    if (promptTokens + request.maxTokens > this.contextSize) {
      throw new ModelError('scripted model: context exceeded', {
        code: 'context-overflow',
        isRetryable: false,
      });
    }
    const reply = this.script.shift() ?? this.fallback;
    if (reply === undefined) throw new Error(`The script has no reply for call ${this.calls.length}`);
    const content = typeof reply === 'function' ? reply(request, this.calls.length) : reply;
    return {
      content,
      finishReason: 'stop',
      usage: { promptTokens, completionTokens: this.countTokens(content) },
    };
  }

  async close(): Promise<void> {}
}

/** The `[Type/id]` citations a prompt shows, in order of appearance. */
export function citationsShown(request: GenerateRequest): string[] {
  const text = request.messages.map((message) => message.content).join('\n');
  return [
    ...new Set([...text.matchAll(/\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/g)].map((match) => match[1])),
  ];
}

/** The last user turn's text. */
export function lastUserText(request: GenerateRequest): string {
  return request.messages.filter((message) => message.role === 'user').at(-1)?.content ?? '';
}

/** A tool step of the constrained-JSON protocol. */
export function toolCall(tool: string, args: Record<string, unknown>): string {
  return JSON.stringify({ action: 'call', tool, args });
}

/** The navigator's last step: its reading list (the agent's structured response). */
export function readingList(read: string[] = [], focus = ''): string {
  return toolCall('reading_list', { read, focus });
}

/**
 * A well-behaved model, for tests that are about something else and for the context-packing
 * benchmark: navigation names an empty reading list at once, extraction cites the first sources of its chunk, the
 * write-up cites what its prompt listed.
 */
export function cooperativeReply(request: GenerateRequest): string {
  const shown = citationsShown(request);
  switch (request.schemaName) {
    case 'tool_step':
      return readingList([], 'recent changes');
    case 'facts': {
      const material = lastUserText(request);
      const sources = [...material.matchAll(/^\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/gm)].map(
        (match) => match[1],
      );
      const maxFacts = (request.jsonSchema as { properties: { facts: { maxItems: number } } }).properties
        .facts.maxItems;
      return JSON.stringify({
        facts: [...new Set(sources)]
          .slice(0, Math.min(3, maxFacts))
          .map((source) => ({ fact: `Finding recorded in ${source}.`, citations: [source] })),
      });
    }
    case 'draft': {
      const ruleIds = [...lastUserText(request).matchAll(/ruleId (\S+) \(/g)].map((match) => match[1]);
      return JSON.stringify({
        sections: [
          {
            heading: (
              request.jsonSchema as {
                properties: { sections: { items: { properties: { heading: { enum: string[] } } } } };
              }
            ).properties.sections.items.properties.heading.enum[1],
            lines: shown
              .slice(0, 6)
              .map((reference) => ({ text: `Noted in the record.`, citations: [reference] })),
          },
        ],
        suggestions: ruleIds.map((ruleId) => ({
          ruleId,
          text: `Consider the recommended action for ${ruleId}.`,
        })),
      });
    }
    default:
      return '{}';
  }
}
