import { chatCompletion, InferenceClientProviderApiError } from '@huggingface/inference';
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
export interface RemoteProviderOptions {
  /** Base URL; the client posts to `<endpointUrl>/v1/chat/completions`. */
  endpointUrl: string;
  model: string;
  accessToken?: string;
  contextSize: number;
  timeoutMs: number;
  /** Extra attempts for retryable failures (429, 5xx, timeouts) within one call. */
  retries: number;
  retryDelayMs?: number;
}

/** 408, 425, 429 and 5xx may succeed later; other 4xx mean the request itself is wrong. */
export function isRetryableStatus(status: number): boolean {
  return status === 408 || status === 425 || status === 429 || status >= 500;
}

/**
 * The grammar-safe schemas use `oneOf` (node-llama-cpp mishandles `anyOf`); inference servers'
 * structured-output engines (xgrammar, outlines, llama.cpp server) support `anyOf` more widely.
 * The alternatives used here are disjoint, so the meaning is the same.
 */
export function toServerSchema(schema: unknown): unknown {
  if (Array.isArray(schema)) return schema.map(toServerSchema);
  if (schema === null || typeof schema !== 'object') return schema;
  return Object.fromEntries(
    Object.entries(schema).map(([key, value]) => [key === 'oneOf' ? 'anyOf' : key, toServerSchema(value)]),
  );
}

function finishReasonOf(reason: string | undefined): FinishReason {
  if (reason === 'length') return 'length';
  if (reason === 'stop' || reason === 'eos_token' || reason === 'stop_sequence') return 'stop';
  return 'other';
}

function toModelError(error: unknown, timedOut: boolean, callerAborted: boolean): ModelError {
  if (error instanceof ModelError) return error;
  if (callerAborted)
    return new ModelError('Generation aborted', { code: 'aborted', isRetryable: true, cause: error });
  if (timedOut)
    return new ModelError('The inference server timed out', {
      code: 'timeout',
      isRetryable: true,
      cause: error,
    });
  if (error instanceof InferenceClientProviderApiError) {
    const status = error.httpResponse.status;
    return new ModelError(`The inference server answered ${status}`, {
      code: 'http-error',
      status,
      isRetryable: isRetryableStatus(status),
      cause: error,
    });
  }
  // Connection refused, DNS, reset: the server may come back.
  return new ModelError('The inference server could not be reached or answered garbage', {
    code: 'unreachable',
    isRetryable: true,
    cause: error,
  });
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
    let lastError: ModelError | undefined;
    for (let attempt = 0; attempt <= this.options.retries; attempt++) {
      if (attempt > 0)
        await new Promise((resolve) => setTimeout(resolve, (this.options.retryDelayMs ?? 500) * attempt));
      try {
        return await this.attempt(request, messages, promptTokens);
      } catch (error) {
        lastError = error as ModelError;
        if (!lastError.isRetryable || lastError.code === 'aborted') throw lastError;
      }
    }
    throw lastError;
  }

  private async attempt(
    request: GenerateRequest,
    messages: ReturnType<typeof toGemmaTurns>,
    promptTokens: number,
  ): Promise<GenerateResult> {
    const timeout = AbortSignal.timeout(this.options.timeoutMs);
    const signal = request.signal ? AbortSignal.any([request.signal, timeout]) : timeout;
    try {
      const output = await chatCompletion(
        {
          endpointUrl: this.options.endpointUrl,
          model: this.options.model,
          ...(this.options.accessToken ? { accessToken: this.options.accessToken } : {}),
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
        { signal, retry_on_error: false },
      );
      const choice = output.choices?.[0];
      if (!choice || typeof choice.message?.content !== 'string') {
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
    } catch (error) {
      throw toModelError(error, timeout.aborted, request.signal?.aborted === true);
    }
  }

  async close(): Promise<void> {}
}
