import type { CallbackManagerForLLMRun } from '@langchain/core/callbacks/manager';
import {
  BaseChatModel,
  type BaseChatModelCallOptions,
  type BaseChatModelParams,
  type BindToolsInput,
} from '@langchain/core/language_models/chat_models';
import { AIMessage, type BaseMessage } from '@langchain/core/messages';
import type { ChatResult } from '@langchain/core/outputs';
import { z } from 'zod';
import type { ChatMessage, ModelProvider } from '../../src/model/provider.ts';
import { dropNulls, type JsonSchemaObject, toGrammarSafe, zodToGrammarSchema } from '../grammar-schema.ts';

/**
 * LangChain's chat-model interface over a model without native tool calling (MedGemma): bindTools
 * is implemented with the constrained-JSON step protocol, so LangChain agents (createAgent and its
 * middleware) run unchanged, and a model with native tool calling could be swapped in without
 * touching them. The protocol itself - Gemma turns, constrained decoding, validation, one repair -
 * stays in the framework-free core; this is only the translation.
 */
export interface MedGemmaChatModelCallOptions extends BaseChatModelCallOptions {
  tools?: BindToolsInput[];
}

export interface MedGemmaChatModelFields extends BaseChatModelParams {
  provider: ModelProvider;
  maxTokens: number;
  temperature?: number;
  maxStringLength?: number;
}

interface ToolSpec {
  name: string;
  description: string;
  parameters: JsonSchemaObject;
}

function isZodSchema(value: unknown): value is z.ZodType {
  return value instanceof z.ZodType;
}

/** LangChain tools (tool() with zod, or OpenAI-style function definitions) as name, description, grammar-safe parameters. */
function toolSpecs(tools: BindToolsInput[], maxStringLength: number): ToolSpec[] {
  return tools.map((candidate) => {
    const tool = candidate as {
      name?: string;
      description?: string;
      schema?: unknown;
      function?: { name: string; description?: string; parameters?: unknown };
    };
    if (tool.function) {
      return {
        name: tool.function.name,
        description: tool.function.description ?? '',
        parameters: toGrammarSafe(tool.function.parameters ?? { type: 'object', properties: {} }, {
          maxStringLength,
        }) as JsonSchemaObject,
      };
    }
    if (!tool.name) throw new Error('A bound tool has no name');
    const parameters = isZodSchema(tool.schema)
      ? zodToGrammarSchema(tool.schema, { maxStringLength })
      : (toGrammarSafe(tool.schema ?? { type: 'object', properties: {} }, {
          maxStringLength,
        }) as JsonSchemaObject);
    return { name: tool.name, description: tool.description ?? '', parameters };
  });
}

function stepSchema(specs: ToolSpec[], maxStringLength: number): JsonSchemaObject {
  return {
    oneOf: [
      ...specs.map((spec) => ({
        type: 'object',
        properties: { action: { const: 'call' }, tool: { const: spec.name }, args: spec.parameters },
        required: ['action', 'tool', 'args'],
        additionalProperties: false,
      })),
      {
        type: 'object',
        properties: {
          action: { const: 'final' },
          content: { type: 'string', maxLength: maxStringLength * 20 },
        },
        required: ['action', 'content'],
        additionalProperties: false,
      },
    ],
  };
}

const stepShape = z.discriminatedUnion('action', [
  z.object({ action: z.literal('call'), tool: z.string(), args: z.record(z.string(), z.unknown()) }),
  z.object({ action: z.literal('final'), content: z.string() }),
]);

function protocolInstructions(specs: ToolSpec[]): string {
  const lines = specs.map(
    (spec) => `- ${spec.name}: ${spec.description} Arguments: ${JSON.stringify(spec.parameters)}`,
  );
  return [
    'Reply with one JSON object and nothing else.',
    'To use a tool: {"action":"call","tool":"<name>","args":{...}}. When you are done: {"action":"final","content":"<answer>"}.',
    'Tools:',
    ...lines,
  ].join('\n');
}

function textOf(message: BaseMessage): string {
  return typeof message.content === 'string'
    ? message.content
    : message.content
        .map((part) =>
          typeof part === 'string' ? part : 'text' in part && typeof part.text === 'string' ? part.text : '',
        )
        .join('');
}

/** LangChain messages as protocol turns: tool calls become the JSON the model would have written. */
function toChatMessages(messages: BaseMessage[]): ChatMessage[] {
  return messages.map((message): ChatMessage => {
    const type = message.getType();
    if (type === 'system') return { role: 'system', content: textOf(message) };
    if (type === 'ai') {
      const calls = (message as AIMessage).tool_calls ?? [];
      if (calls.length) {
        return {
          role: 'assistant',
          content: JSON.stringify({ action: 'call', tool: calls[0].name, args: calls[0].args }),
        };
      }
      return { role: 'assistant', content: JSON.stringify({ action: 'final', content: textOf(message) }) };
    }
    if (type === 'tool') {
      const name = (message as BaseMessage & { name?: string }).name ?? 'the tool';
      return { role: 'user', content: `Result of ${name}:\n${textOf(message)}` };
    }
    return { role: 'user', content: textOf(message) };
  });
}

let toolCallCounter = 0;

export class MedGemmaChatModel extends BaseChatModel<MedGemmaChatModelCallOptions> {
  readonly provider: ModelProvider;
  readonly maxTokens: number;
  readonly temperature: number;
  readonly maxStringLength: number;

  constructor(fields: MedGemmaChatModelFields) {
    super(fields);
    this.provider = fields.provider;
    this.maxTokens = fields.maxTokens;
    this.temperature = fields.temperature ?? 0;
    this.maxStringLength = fields.maxStringLength ?? 200;
  }

  static lc_name(): string {
    return 'MedGemmaChatModel';
  }

  _llmType(): string {
    return 'medgemma-constrained-json';
  }

  override bindTools(tools: BindToolsInput[], kwargs?: Partial<MedGemmaChatModelCallOptions>) {
    return this.withConfig({ tools, ...kwargs } as Partial<MedGemmaChatModelCallOptions>);
  }

  async _generate(
    messages: BaseMessage[],
    options: this['ParsedCallOptions'],
    _runManager?: CallbackManagerForLLMRun,
  ): Promise<ChatResult> {
    const specs = toolSpecs(options.tools ?? [], this.maxStringLength);
    const chat = toChatMessages(messages);
    if (specs.length === 0) {
      const result = await this.provider.generate({
        messages: chat,
        maxTokens: this.maxTokens,
        temperature: this.temperature,
        signal: options.signal,
      });
      return { generations: [{ text: result.content, message: new AIMessage(result.content) }] };
    }
    const prompt: ChatMessage[] = [{ role: 'system', content: protocolInstructions(specs) }, ...chat];
    const jsonSchema = stepSchema(specs, this.maxStringLength);
    let reply = await this.generateStep(prompt, jsonSchema, options.signal);
    let parsed = this.parse(reply);
    if (!parsed.success) {
      // One repair, quoting the problem; a second failure is an error, not a guess.
      reply = await this.generateStep(
        [
          ...prompt,
          { role: 'assistant', content: reply.slice(0, 1000) },
          { role: 'user', content: `${parsed.problem} Reply again with only one JSON object.` },
        ],
        jsonSchema,
        options.signal,
      );
      parsed = this.parse(reply);
      if (!parsed.success) throw new Error(`The model's step was invalid twice: ${parsed.problem}`);
    }
    const step = parsed.step;
    if (step.action === 'final') {
      return { generations: [{ text: step.content, message: new AIMessage(step.content) }] };
    }
    // Arguments go through as a tool call even when they do not fit: createAgent ends the run silently
    // on invalid_tool_calls, while the tool's own zod check returns an error the model can react to.
    toolCallCounter += 1;
    const message = new AIMessage({
      content: '',
      tool_calls: [
        {
          id: `call_${toolCallCounter}`,
          name: step.tool,
          args: dropNulls(step.args) as Record<string, unknown>,
          type: 'tool_call',
        },
      ],
    });
    return { generations: [{ text: '', message }] };
  }

  private async generateStep(
    messages: ChatMessage[],
    jsonSchema: JsonSchemaObject,
    signal: AbortSignal | undefined,
  ): Promise<string> {
    const result = await this.provider.generate({
      messages,
      jsonSchema,
      schemaName: 'tool_step',
      maxTokens: this.maxTokens,
      temperature: this.temperature,
      signal,
    });
    return result.content;
  }

  private parse(
    text: string,
  ): { success: true; step: z.infer<typeof stepShape> } | { success: false; problem: string } {
    let value: unknown;
    try {
      value = JSON.parse(text);
    } catch {
      return { success: false, problem: 'The reply is not valid JSON.' };
    }
    const result = stepShape.safeParse(value);
    if (!result.success) {
      return {
        success: false,
        problem: `The reply does not follow the schema: ${result.error.issues.map((issue) => `${issue.path.join('.')}: ${issue.message}`).join('; ')}`,
      };
    }
    return { success: true, step: result.data };
  }
}
