/**
 * The one small interface every model backend implements (in-process GGUF, remote inference server,
 * test doubles). Providers know models, not FHIR: they take chat messages and, optionally, a JSON
 * schema the output must follow, and return text.
 */
type ChatRole = 'system' | 'user' | 'assistant';

export interface ChatMessage {
  role: ChatRole;
  content: string;
}

/** A grammar-safe JSON schema (see agents/grammar-schema.ts): what constrained decoding accepts. */
export type JsonSchema = Record<string, unknown>;

export interface GenerateRequest {
  messages: ChatMessage[];
  /** When set, decoding is constrained to JSON that follows this schema. */
  jsonSchema?: JsonSchema;
  /** A name for the schema (remote servers want one). */
  schemaName?: string;
  maxTokens: number;
  /** 0 to 0.1 for JSON steps. */
  temperature?: number;
  signal?: AbortSignal;
}

export type FinishReason = 'stop' | 'length' | 'abort' | 'other';

export interface TokenUsage {
  promptTokens: number;
  completionTokens: number;
}

export interface GenerateResult {
  content: string;
  finishReason: FinishReason;
  usage: TokenUsage;
}

export interface ModelProvider {
  /** Which backend: 'llama-cpp', 'remote', 'scripted', ... */
  readonly provider: string;
  readonly modelId: string;
  /** Tokens the model sees at once; every call's prompt plus maxTokens must fit. */
  readonly contextSize: number;
  generate(request: GenerateRequest): Promise<GenerateResult>;
  /** Exact count when the backend has the tokenizer at hand, else an estimate. */
  countTokens(text: string): number;
  close(): Promise<void>;
}

/**
 * Counts one draft run's model calls. Every chat model (constrained JSON or native tool calling) calls it
 * before each generation, with what the call will cost at most, and after, with what it cost: the run's
 * context and budget limits hold whichever model is plugged in.
 */
export interface ModelCallMeter {
  /** Throws when the call would not fit the context or the run's budget; nothing is sent then. */
  beforeCall(call: { promptTokens: number; maxTokens: number }): void;
  afterCall(usage: TokenUsage): void;
}

/** Per-call settings every chat model of the agents accepts, beyond LangChain's own call options. */
export interface ChatCallSettings {
  maxTokens?: number;
  /** Constrains the answer to JSON that follows this schema (structured output). */
  responseFormat?: { name: string; schema: JsonSchema };
}

/** Errors from a model backend; `isRetryable` tells the queue whether a later attempt may succeed. */
export class ModelError extends Error {
  readonly isRetryable: boolean;
  readonly code: string;
  readonly status: number | undefined;

  constructor(
    message: string,
    options: { code: string; isRetryable: boolean; status?: number; cause?: unknown },
  ) {
    super(message, { cause: options.cause });
    this.name = 'ModelError';
    this.code = options.code;
    this.isRetryable = options.isRetryable;
    this.status = options.status;
  }
}

/**
 * Characters per token for budgeting when no tokenizer is at hand. Gemma's tokenizer averages about
 * four characters per token on English clinical prose and fewer on JSON; three errs on the safe side.
 */
const estimatedCharactersPerToken = 3;

export function estimateTokens(text: string): number {
  return Math.ceil(text.length / estimatedCharactersPerToken);
}

/** Rough per-message overhead of the chat template's turn markers. */
export const tokensPerTurn = 6;

export function countPromptTokens(
  provider: Pick<ModelProvider, 'countTokens'>,
  messages: ChatMessage[],
): number {
  return messages.reduce(
    (total, message) => total + provider.countTokens(message.content) + tokensPerTurn,
    0,
  );
}
