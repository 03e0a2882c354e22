import type { CallbackManagerForLLMRun } from '@langchain/core/callbacks/manager';
import { AIMessage, type BaseMessage, type ToolCall } from '@langchain/core/messages';
import type { ChatResult } from '@langchain/core/outputs';
import { convertToOpenAITool } from '@langchain/core/utils/function_calling';
import {
  chatResult,
  messageText,
  nextToolCallId,
  ToolCallingChatModel,
  type ToolCallingChatModelCallOptions,
  type ToolCallingChatModelFields,
} from '../../agents/langchain/chat-model-base.ts';
import {
  type ChatCompletionBody,
  type ChatCompletionsConnection,
  postChatCompletion,
  toServerSchema,
} from './chat-completions.ts';
import { estimateTokens, tokensPerTurn } from './provider.ts';

/**
 * A chat model with native tool calling on an OpenAI-compatible server (vLLM, TGI, llama.cpp server,
 * Ollama's /v1 serving a model whose chat template has tool tokens): tools go out as `tools`, calls
 * come back as `tool_calls`, structured answers are constrained with `response_format: json_schema`.
 * It plugs into the same agents as the MedGemma adapter, with the same tools, middleware, prompts and
 * verification; only the tool-call mechanics are the server's. Not for MedGemma (no tool tokens).
 */
interface OpenAICompatibleChatModelFields extends ToolCallingChatModelFields {
  connection: ChatCompletionsConnection;
}

type OutgoingMessage = ChatCompletionBody['messages'][number];

function toOutgoing(message: BaseMessage): OutgoingMessage {
  const type = message.getType();
  if (type === 'system') return { role: 'system', content: messageText(message) };
  if (type === 'tool') {
    const tool = message as BaseMessage & { tool_call_id: string };
    return { role: 'tool', tool_call_id: tool.tool_call_id, content: messageText(message) };
  }
  if (type === 'ai') {
    const calls = (message as AIMessage).tool_calls ?? [];
    if (calls.length === 0) return { role: 'assistant', content: messageText(message) };
    return {
      role: 'assistant',
      content: messageText(message),
      tool_calls: calls.map((call) => ({
        id: call.id ?? '',
        type: 'function',
        function: { name: call.name, arguments: JSON.stringify(call.args) },
      })),
    };
  }
  return { role: 'user', content: messageText(message) };
}

function toolChoiceOf(choice: unknown): ChatCompletionBody['tool_choice'] {
  if (choice === undefined || choice === 'auto' || choice === 'none' || choice === 'required') return choice;
  if (choice === 'any') return 'required';
  if (typeof choice === 'string') return { type: 'function', function: { name: choice } };
  return choice as ChatCompletionBody['tool_choice'];
}

/**
 * Arguments arrive as a JSON string (OpenAI, vLLM) or an object (TGI). Unparseable ones still become
 * a tool call, under a key no tool accepts, so the tool runner answers with a problem the model can fix
 * (an invalid tool call would end a LangChain agent silently).
 */
function argumentsOf(raw: unknown): Record<string, unknown> {
  if (raw && typeof raw === 'object' && !Array.isArray(raw)) return raw as Record<string, unknown>;
  if (typeof raw === 'string') {
    try {
      const parsed: unknown = JSON.parse(raw || '{}');
      if (parsed && typeof parsed === 'object' && !Array.isArray(parsed))
        return parsed as Record<string, unknown>;
    } catch {
      // falls through
    }
  }
  return { unparsed_arguments: String(raw).slice(0, 200) };
}

export class OpenAICompatibleChatModel extends ToolCallingChatModel<ToolCallingChatModelCallOptions> {
  readonly connection: ChatCompletionsConnection;

  constructor(fields: OpenAICompatibleChatModelFields) {
    super(fields);
    this.connection = fields.connection;
  }

  static lc_name(): string {
    return 'OpenAICompatibleChatModel';
  }

  _llmType(): string {
    return 'openai-compatible-native-tools';
  }

  async _generate(
    messages: BaseMessage[],
    options: this['ParsedCallOptions'],
    _runManager?: CallbackManagerForLLMRun,
  ): Promise<ChatResult> {
    const maxTokens = options.maxTokens ?? this.maxTokens;
    const tools = (options.tools ?? []).map(
      (tool) => convertToOpenAITool(tool) as NonNullable<ChatCompletionBody['tools']>[number],
    );
    const body: ChatCompletionBody = {
      messages: messages.map(toOutgoing),
      max_tokens: maxTokens,
      temperature: this.temperature,
      ...(tools.length ? { tools, tool_choice: toolChoiceOf(options.tool_choice) } : {}),
      ...(options.responseFormat
        ? {
            response_format: {
              type: 'json_schema',
              json_schema: {
                name: options.responseFormat.name,
                schema: toServerSchema(options.responseFormat.schema) as Record<string, unknown>,
                strict: true,
              },
            },
          }
        : {}),
    };
    // No tokenizer at hand: the same estimate the remote MedGemma provider uses, tool schemas included.
    const promptTokens =
      body.messages.reduce(
        (sum, message) => sum + estimateTokens(JSON.stringify(message.content ?? '')) + tokensPerTurn,
        0,
      ) + (tools.length ? estimateTokens(JSON.stringify(tools)) : 0);
    this.meter?.beforeCall({ promptTokens, maxTokens });
    const output = await postChatCompletion(this.connection, body, options.signal);
    const reply = output.choices[0].message;
    const content = typeof reply.content === 'string' ? reply.content : '';
    const usage = {
      promptTokens: output.usage?.prompt_tokens ?? promptTokens,
      completionTokens: output.usage?.completion_tokens ?? estimateTokens(content),
    };
    this.meter?.afterCall(usage);
    const toolCalls: ToolCall[] = (reply.tool_calls ?? []).map((call) => ({
      id: call.id || nextToolCallId(),
      name: call.function.name,
      args: argumentsOf(call.function.arguments),
      type: 'tool_call',
    }));
    return chatResult(new AIMessage({ content, tool_calls: toolCalls }), usage);
  }
}
