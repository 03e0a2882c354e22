import { type ChatCompletionsConnection, postChatCompletion, toServerSchema } from './chat-completions.ts';
import { stripThinking, toGemmaTurns } from './gemma-turns.ts';
import {
  countPromptTokens,
  estimateTokens,
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  ModelError,
  type ModelProvider,
} from './provider.ts';

/**
 * MedGemma on the site's own inference server (TGI, vLLM, llama.cpp server, Ollama's /v1, a Hugging
 * Face Inference Endpoint) through its OpenAI-compatible chat endpoint. Output is constrained with
 * `response_format: json_schema`; the servers' own Gemma tool parsers are not relied on.
 */
interface RemoteProviderOptions extends ChatCompletionsConnection {
  contextSize: number;
}

function finishReasonOf(reason: string | undefined): FinishReason {
  if (reason === 'length') return 'length';
  if (reason === 'stop' || reason === 'eos_token' || reason === 'stop_sequence') return 'stop';
  return 'other';
}

export class RemoteProvider implements ModelProvider {
  readonly provider = 'remote';
  readonly modelId: string;
  readonly contextSize: number;
  private readonly options: RemoteProviderOptions;

  constructor(options: RemoteProviderOptions) {
    this.options = options;
    this.modelId = options.model;
    this.contextSize = options.contextSize;
  }

  countTokens(text: string): number {
    return estimateTokens(text);
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    const messages = toGemmaTurns(request.messages);
    const promptTokens = countPromptTokens(this, messages);
    if (promptTokens + request.maxTokens > this.contextSize) {
      throw new ModelError(
        `Prompt of about ${promptTokens} tokens plus ${request.maxTokens} output tokens exceeds the context of ${this.contextSize}`,
        { code: 'context-overflow', isRetryable: false },
      );
    }
    const output = await postChatCompletion(
      this.options,
      {
        messages: messages.map((message) => ({ role: message.role, content: message.content })),
        max_tokens: request.maxTokens,
        temperature: request.temperature ?? 0,
        ...(request.jsonSchema
          ? {
              response_format: {
                type: 'json_schema',
                json_schema: {
                  name: request.schemaName ?? 'step',
                  schema: toServerSchema(request.jsonSchema) as Record<string, unknown>,
                  strict: true,
                },
              },
            }
          : {}),
      },
      request.signal,
    );
    const choice = output.choices[0];
    if (typeof choice.message.content !== 'string') {
      throw new ModelError('The inference server returned no message', {
        code: 'bad-response',
        isRetryable: true,
      });
    }
    return {
      content: stripThinking(choice.message.content),
      finishReason: finishReasonOf(choice.finish_reason),
      usage: {
        promptTokens: output.usage?.prompt_tokens ?? promptTokens,
        completionTokens: output.usage?.completion_tokens ?? estimateTokens(choice.message.content),
      },
    };
  }

  async close(): Promise<void> {}
}
