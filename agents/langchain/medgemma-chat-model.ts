import type { CallbackManagerForLLMRun } from '@langchain/core/callbacks/manager';
import type { BindToolsInput } from '@langchain/core/language_models/chat_models';
import { AIMessage, type BaseMessage } from '@langchain/core/messages';
import type { ChatResult } from '@langchain/core/outputs';
import {
  type ChatMessage,
  countPromptTokens,
  type GenerateResult,
  type JsonSchema,
  type ModelProvider,
  type TokenUsage,
} from '../../src/model/provider.ts';
import { InvalidModelOutputError } from '../model-errors.ts';
import { type PromptTemplate, renderPrompt } from '../prompt-library.ts';
import {
  chatResult,
  messageText,
  nextToolCallId,
  ToolCallingChatModel,
  type ToolCallingChatModelCallOptions,
  type ToolCallingChatModelFields,
} from './chat-model-base.ts';
import { createStepProtocol, type StepProtocol, type StepSchemaStyle, toolSpecs } from './step-protocol.ts';

/**
 * LangChain's chat-model interface over a model without native tool calling (MedGemma, in process or on
 * an inference server): `bindTools` is implemented with the constrained-JSON step protocol, and
 * `responseFormat` constrains an answer to a JSON schema, so LangChain agents (createAgent and its
 * middleware) and the structured stages run unchanged on it, as on a chat model with native tool calling.
 * Every generation goes through the run's meter first (context and budget).
 */
interface MedGemmaChatModelFields extends ToolCallingChatModelFields {
  provider: ModelProvider;
  /** The tool-call-protocol prompt (prompts/tool-call-protocol.md). */
  protocolPrompt: PromptTemplate;
  /** Cap for generated strings in tool arguments (the final answer may be twenty times this). */
  maxStringLength?: number;
  stepSchemaStyle?: StepSchemaStyle;
}

/** Which tools a call may use, and whether it may answer without one, from LangChain's tool_choice. */
function applyToolChoice(
  tools: BindToolsInput[],
  toolChoice: unknown,
): { tools: BindToolsInput[]; allowFinal: boolean } {
  const nameOf = (tool: BindToolsInput) =>
    (tool as { name?: string; function?: { name?: string } }).name ??
    (tool as { function?: { name?: string } }).function?.name;
  if (toolChoice === 'none') return { tools: [], allowFinal: true };
  if (toolChoice === 'any' || toolChoice === 'required') return { tools, allowFinal: false };
  const named =
    typeof toolChoice === 'string' && toolChoice !== 'auto'
      ? toolChoice
      : (toolChoice as { function?: { name?: string } } | undefined)?.function?.name;
  if (named) return { tools: tools.filter((tool) => nameOf(tool) === named), allowFinal: false };
  return { tools, allowFinal: true };
}

export class MedGemmaChatModel extends ToolCallingChatModel<ToolCallingChatModelCallOptions> {
  readonly provider: ModelProvider;
  readonly protocolPrompt: PromptTemplate;
  readonly maxStringLength: number;
  readonly stepSchemaStyle: StepSchemaStyle;

  constructor(fields: MedGemmaChatModelFields) {
    super(fields);
    this.provider = fields.provider;
    this.protocolPrompt = fields.protocolPrompt;
    this.maxStringLength = fields.maxStringLength ?? 200;
    this.stepSchemaStyle = fields.stepSchemaStyle ?? 'precise';
  }

  static lc_name(): string {
    return 'MedGemmaChatModel';
  }

  _llmType(): string {
    return 'medgemma-constrained-json';
  }

  async _generate(
    messages: BaseMessage[],
    options: this['ParsedCallOptions'],
    _runManager?: CallbackManagerForLLMRun,
  ): Promise<ChatResult> {
    const maxTokens = options.maxTokens ?? this.maxTokens;
    const usage: TokenUsage = { promptTokens: 0, completionTokens: 0 };
    const { tools, allowFinal } = applyToolChoice(options.tools ?? [], options.tool_choice);
    if (tools.length === 0) {
      const result = await this.generateOnce(this.toChatMessages(messages), maxTokens, usage, options);
      return chatResult(new AIMessage(result.content), usage);
    }
    const protocol = createStepProtocol(toolSpecs(tools, this.maxStringLength), {
      style: this.stepSchemaStyle,
      allowFinal,
      maxStringLength: this.maxStringLength,
    });
    const prompt: ChatMessage[] = [
      { role: 'system', content: renderPrompt(this.protocolPrompt, protocol.promptValues) },
      ...this.toChatMessages(messages, protocol),
    ];
    const stepOptions = { ...options, responseFormat: { name: 'tool_step', schema: protocol.jsonSchema } };
    const first = await this.generateOnce(prompt, maxTokens, usage, stepOptions);
    let parsed = protocol.parse(first.content);
    if (parsed.problem) {
      // One repair, quoting the problem; a reply still without the step's shape is an error, not a guess.
      const second = await this.generateOnce(
        [
          ...prompt,
          { role: 'assistant', content: first.content.slice(0, 1000) || '(empty reply)' },
          { role: 'user', content: `${parsed.problem} Reply again with only one JSON object.` },
        ],
        maxTokens,
        usage,
        stepOptions,
      );
      parsed = protocol.parse(second.content);
      if (!parsed.step) {
        throw new InvalidModelOutputError(`The model's tool step was invalid twice: ${parsed.problem}`);
      }
    }
    const step = parsed.step!;
    if (step.action === 'final') return chatResult(new AIMessage(step.content), usage);
    // Arguments that still do not fit go through as a tool call: createAgent ends the run silently on
    // invalid_tool_calls, while the tool runner returns the problem as a result the model can react to.
    return chatResult(
      new AIMessage({
        content: '',
        tool_calls: [{ id: nextToolCallId(), name: step.tool, args: step.args, type: 'tool_call' }],
      }),
      usage,
    );
  }

  private async generateOnce(
    messages: ChatMessage[],
    maxTokens: number,
    usage: TokenUsage,
    options: { responseFormat?: { name: string; schema: JsonSchema }; signal?: AbortSignal },
  ): Promise<GenerateResult> {
    this.meter?.beforeCall({ promptTokens: countPromptTokens(this.provider, messages), maxTokens });
    const result = await this.provider.generate({
      messages,
      ...(options.responseFormat
        ? { jsonSchema: options.responseFormat.schema, schemaName: options.responseFormat.name }
        : {}),
      maxTokens,
      temperature: this.temperature,
      signal: options.signal,
    });
    this.meter?.afterCall(result.usage);
    usage.promptTokens += result.usage.promptTokens;
    usage.completionTokens += result.usage.completionTokens;
    return result;
  }

  /** LangChain messages as protocol turns: tool calls become the JSON the model would have written. */
  private toChatMessages(messages: BaseMessage[], protocol?: StepProtocol): ChatMessage[] {
    return messages.map((message): ChatMessage => {
      const type = message.getType();
      if (type === 'system') return { role: 'system', content: messageText(message) };
      if (type === 'ai') {
        const calls = (message as AIMessage).tool_calls ?? [];
        if (!protocol) return { role: 'assistant', content: messageText(message) };
        const steps = calls.length
          ? calls.map((call) => protocol.render({ action: 'call', tool: call.name, args: call.args }))
          : [protocol.render({ action: 'final', content: messageText(message) })];
        return { role: 'assistant', content: steps.join('\n') };
      }
      if (type === 'tool') {
        const name = (message as BaseMessage & { name?: string }).name ?? 'the tool';
        return { role: 'user', content: `Result of ${name}:\n${messageText(message)}` };
      }
      return { role: 'user', content: messageText(message) };
    });
  }
}
