import { access } from 'node:fs/promises';
import {
  type ChatHistoryItem,
  getLlama,
  type Llama,
  LlamaChat,
  type LlamaContext,
  type LlamaContextSequence,
  type LlamaGrammar,
  LlamaLogLevel,
  type LlamaModel,
  type TokenBias,
} from 'node-llama-cpp';
import type { Logger } from '../log.ts';
import { stripThinking, toGemmaTurns } from './gemma-turns.ts';
import { validateGgufFile } from './gguf-header.ts';
import {
  type ChatMessage,
  countPromptTokens,
  type FinishReason,
  type GenerateRequest,
  type GenerateResult,
  ModelError,
  type ModelProvider,
} from './provider.ts';

/**
 * MedGemma in this process through node-llama-cpp: the model is loaded once at start and shared;
 * one context holds several sequences so that several jobs can generate at once (one sequence
 * serves one call at a time).
 */
interface LlamaCppProviderOptions {
  modelPath: string;
  /** Shown when the file is missing: how to obtain it. */
  pullCommand: string;
  modelId?: string;
  contextSize: number;
  /** Unset: node-llama-cpp decides. On two cores, 1 is far faster for tiny models. */
  threads?: number;
  gpuLayers: 'auto' | number;
  /** 'auto' uses a GPU binary when one works; false forces the CPU build. */
  gpu?: 'auto' | false;
  sequences: number;
  logger: Logger;
  /**
   * A sampling bias built once for the loaded model. Tests use it to keep tiny random-weight models
   * away from tokens that decode to nothing; production leaves it unset.
   */
  tokenBias?: (model: LlamaModel) => TokenBias;
}

class SequencePool {
  private readonly free: LlamaContextSequence[];
  private readonly waiting: ((sequence: LlamaContextSequence) => void)[] = [];

  constructor(sequences: LlamaContextSequence[]) {
    this.free = [...sequences];
  }

  acquire(): Promise<LlamaContextSequence> {
    const sequence = this.free.pop();
    if (sequence) return Promise.resolve(sequence);
    return new Promise((resolve) => this.waiting.push(resolve));
  }

  release(sequence: LlamaContextSequence): void {
    const next = this.waiting.shift();
    if (next) next(sequence);
    else this.free.push(sequence);
  }
}

function toHistory(messages: ChatMessage[]): ChatHistoryItem[] {
  const history: ChatHistoryItem[] = toGemmaTurns(messages).map((turn) =>
    turn.role === 'user' ? { type: 'user', text: turn.content } : { type: 'model', response: [turn.content] },
  );
  history.push({ type: 'model', response: [] });
  return history;
}

function finishReasonOf(stopReason: string): FinishReason {
  if (stopReason === 'maxTokens') return 'length';
  if (stopReason === 'abort') return 'abort';
  return 'stop';
}

export class LlamaCppProvider implements ModelProvider {
  readonly provider = 'llama-cpp';
  readonly modelId: string;
  readonly contextSize: number;
  private readonly llama: Llama;
  private readonly model: LlamaModel;
  private readonly context: LlamaContext;
  private readonly pool: SequencePool;
  private readonly grammars = new Map<string, Promise<LlamaGrammar>>();
  private readonly tokenBias: TokenBias | undefined;

  private constructor(options: {
    modelId: string;
    llama: Llama;
    model: LlamaModel;
    context: LlamaContext;
    sequences: LlamaContextSequence[];
    tokenBias: LlamaCppProviderOptions['tokenBias'];
  }) {
    this.modelId = options.modelId;
    this.llama = options.llama;
    this.model = options.model;
    this.context = options.context;
    this.contextSize = options.context.contextSize;
    this.pool = new SequencePool(options.sequences);
    this.tokenBias = options.tokenBias?.(options.model);
  }

  static async create(options: LlamaCppProviderOptions): Promise<LlamaCppProvider> {
    try {
      await access(options.modelPath);
    } catch (error) {
      throw new ModelError(
        `The model file ${options.modelPath} does not exist. Obtain it with: ${options.pullCommand} ` +
          `(add --dir <folder> --filename <name> to save it where model.llamaCpp.modelPath points, now ${options.modelPath}).`,
        { code: 'model-file-missing', isRetryable: false, cause: error },
      );
    }
    const summary = await validateGgufFile(options.modelPath);
    const llama = await getLlama({ gpu: options.gpu ?? 'auto', logLevel: LlamaLogLevel.error });
    try {
      const model = await llama.loadModel({ modelPath: options.modelPath, gpuLayers: options.gpuLayers });
      const context = await model.createContext({
        contextSize: options.contextSize,
        sequences: options.sequences,
        ...(options.threads ? { threads: options.threads } : {}),
      });
      const sequences = Array.from({ length: options.sequences }, () => context.getSequence());
      options.logger.info(
        {
          architecture: summary.architecture,
          contextSize: context.contextSize,
          sequences: options.sequences,
          gpu: llama.gpu,
        },
        'model loaded',
      );
      return new LlamaCppProvider({
        modelId: options.modelId ?? model.fileInfo.metadata.general.name ?? options.modelPath,
        llama,
        model,
        context,
        sequences,
        tokenBias: options.tokenBias,
      });
    } catch (error) {
      await llama.dispose();
      throw error;
    }
  }

  countTokens(text: string): number {
    return this.model.tokenize(text).length;
  }

  private grammarFor(schema: Record<string, unknown>): Promise<LlamaGrammar> {
    const key = JSON.stringify(schema);
    let grammar = this.grammars.get(key);
    if (!grammar) {
      // The schema has been made grammar-safe by the caller; node-llama-cpp's types are stricter than JSON.
      grammar = this.llama.createGrammarForJsonSchema(schema as never);
      grammar.catch(() => this.grammars.delete(key));
      this.grammars.set(key, grammar);
      // Schemas differ per chunk (citation enums): keep the cache small.
      if (this.grammars.size > 64) this.grammars.delete(this.grammars.keys().next().value as string);
    }
    return grammar;
  }

  async generate(request: GenerateRequest): Promise<GenerateResult> {
    const promptTokens = countPromptTokens(this, toGemmaTurns(request.messages));
    if (promptTokens + request.maxTokens > this.contextSize) {
      // A context shift would silently drop the first turn, which holds the instructions.
      throw new ModelError(
        `Prompt of ${promptTokens} tokens plus ${request.maxTokens} output tokens exceeds the context of ${this.contextSize}`,
        { code: 'context-overflow', isRetryable: false },
      );
    }
    let grammar: LlamaGrammar | undefined;
    try {
      grammar = request.jsonSchema ? await this.grammarFor(request.jsonSchema) : undefined;
    } catch (error) {
      throw new ModelError('The JSON schema cannot be turned into a grammar', {
        code: 'schema-unsupported',
        isRetryable: false,
        cause: error,
      });
    }
    const sequence = await this.pool.acquire();
    const chat = new LlamaChat({ contextSequence: sequence });
    try {
      const response = await chat.generateResponse(toHistory(request.messages), {
        ...(grammar ? { grammar } : {}),
        maxTokens: request.maxTokens,
        temperature: request.temperature ?? 0,
        signal: request.signal,
        ...(this.tokenBias ? { tokenBias: this.tokenBias } : {}),
      });
      const content = stripThinking(response.response);
      return {
        content,
        finishReason: finishReasonOf(response.metadata.stopReason),
        usage: { promptTokens, completionTokens: this.countTokens(response.response) },
      };
    } catch (error) {
      if (request.signal?.aborted) {
        throw new ModelError('Generation aborted', { code: 'aborted', isRetryable: true, cause: error });
      }
      throw new ModelError('Local generation failed', {
        code: 'generation-failed',
        isRetryable: true,
        cause: error,
      });
    } finally {
      chat.dispose({ disposeSequence: false });
      this.pool.release(sequence);
    }
  }

  async close(): Promise<void> {
    await this.context.dispose();
    await this.model.dispose();
    await this.llama.dispose();
  }
}
