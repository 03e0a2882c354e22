import { chatCompletion, InferenceClientProviderApiError } from '@huggingface/inference';
import { ModelError } from './provider.ts';

/**
 * One client for the site's OpenAI-compatible chat endpoint (TGI, vLLM, llama.cpp server, Ollama's
 * /v1, a Hugging Face Inference Endpoint), shared by the MedGemma provider (constrained JSON) and the
 * chat model with native tool calling: the same timeout, retries and error mapping for both.
 */
export interface ChatCompletionsConnection {
  /** Base URL; the client posts to `<endpointUrl>/v1/chat/completions`. */
  endpointUrl: string;
  model: string;
  accessToken?: string;
  timeoutMs: number;
  /** Extra attempts for retryable failures (429, 5xx, timeouts) within one call. */
  retries: number;
  retryDelayMs?: number;
}

type ChatCompletionInput = Parameters<typeof chatCompletion>[0];
type ChatCompletionOutput = Awaited<ReturnType<typeof chatCompletion>>;
export type ChatCompletionBody = Pick<ChatCompletionInput, 'messages'> &
  Partial<
    Pick<ChatCompletionInput, 'max_tokens' | 'temperature' | 'response_format' | 'tools' | 'tool_choice'>
  >;

/** 408, 425, 429 and 5xx may succeed later; other 4xx mean the request itself is wrong. */
function isRetryableStatus(status: number): boolean {
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

async function attempt(
  connection: ChatCompletionsConnection,
  body: ChatCompletionBody,
  signal: AbortSignal | undefined,
): Promise<ChatCompletionOutput> {
  const timeout = AbortSignal.timeout(connection.timeoutMs);
  const combined = signal ? AbortSignal.any([signal, timeout]) : timeout;
  try {
    const output = await chatCompletion(
      {
        ...body,
        endpointUrl: connection.endpointUrl,
        model: connection.model,
        ...(connection.accessToken ? { accessToken: connection.accessToken } : {}),
      },
      { signal: combined, retry_on_error: false },
    );
    if (!output.choices?.[0]?.message) {
      throw new ModelError('The inference server returned no message', {
        code: 'bad-response',
        isRetryable: true,
      });
    }
    return output;
  } catch (error) {
    throw toModelError(error, timeout.aborted, signal?.aborted === true);
  }
}

export async function postChatCompletion(
  connection: ChatCompletionsConnection,
  body: ChatCompletionBody,
  signal?: AbortSignal,
): Promise<ChatCompletionOutput> {
  let lastError: ModelError | undefined;
  for (let attemptIndex = 0; attemptIndex <= connection.retries; attemptIndex++) {
    if (attemptIndex > 0) {
      await new Promise((resolve) => setTimeout(resolve, (connection.retryDelayMs ?? 500) * attemptIndex));
    }
    try {
      return await attempt(connection, body, signal);
    } catch (error) {
      lastError = error as ModelError;
      if (!lastError.isRetryable || lastError.code === 'aborted') throw lastError;
    }
  }
  throw lastError;
}
