import {
  BaseChatModel,
  type BaseChatModelCallOptions,
  type BaseChatModelParams,
  type BindToolsInput,
} from '@langchain/core/language_models/chat_models';
import type { AIMessage, BaseMessage } from '@langchain/core/messages';
import type { ChatResult } from '@langchain/core/outputs';
import type { ChatCallSettings, ModelCallMeter, TokenUsage } from '../../src/model/provider.ts';

/** A LangChain message's text, whether its content is a string or a list of parts. */
export function messageText(message: BaseMessage): string {
  return typeof message.content === 'string'
    ? message.content
    : message.content
        .map((part) =>
          typeof part === 'string' ? part : 'text' in part && typeof part.text === 'string' ? part.text : '',
        )
        .join('');
}

export interface ToolCallingChatModelCallOptions extends BaseChatModelCallOptions, ChatCallSettings {
  tools?: BindToolsInput[];
}

export interface ToolCallingChatModelFields extends BaseChatModelParams {
  maxTokens: number;
  temperature?: number;
  meter?: ModelCallMeter;
}

/**
 * What the MedGemma adapter and the native-tool-calling model share: tools bound as call options (each
 * `_generate` turns them into its own mechanics), the default token cap and temperature, and the run's
 * meter that every generation goes through first.
 */
export abstract class ToolCallingChatModel<
  CallOptions extends ToolCallingChatModelCallOptions,
> extends BaseChatModel<CallOptions> {
  readonly maxTokens: number;
  readonly temperature: number;
  readonly meter: ModelCallMeter | undefined;

  constructor(fields: ToolCallingChatModelFields) {
    super(fields);
    this.maxTokens = fields.maxTokens;
    this.temperature = fields.temperature ?? 0;
    this.meter = fields.meter;
  }

  override bindTools(tools: BindToolsInput[], kwargs?: Partial<CallOptions>) {
    return this.withConfig({ tools, ...kwargs } as Partial<CallOptions>);
  }
}

let toolCallCounter = 0;

/** An id for a tool call the server did not name; unique in the process, as tool messages refer to it. */
export function nextToolCallId(): string {
  toolCallCounter += 1;
  return `call_${toolCallCounter}`;
}

/** The generation LangChain expects, with the call's token usage on the message. */
export function chatResult(message: AIMessage, usage: TokenUsage): ChatResult {
  message.usage_metadata = {
    input_tokens: usage.promptTokens,
    output_tokens: usage.completionTokens,
    total_tokens: usage.promptTokens + usage.completionTokens,
  };
  return { generations: [{ text: typeof message.content === 'string' ? message.content : '', message }] };
}
