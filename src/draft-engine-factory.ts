import type { DraftEngine } from '../agents/draft-engine.ts';
import type { DraftModel } from '../agents/draft-model.ts';
import { createExtractiveEngine } from '../agents/extractive-engine.ts';
import type { PromptLibrary } from '../agents/prompt-library.ts';
import type { Logger } from './log.ts';
import { type ModelConfig, modelProfiles } from './model/model-config.ts';
import { estimateTokens, type ModelProvider } from './model/provider.ts';

// The model stack (node-llama-cpp, the inference client, the agents) is loaded only when a model is
// configured: the extractive default, and intake-only replicas, do not carry its memory.

/**
 * Wiring for the composition root: the `model` config section in, a DraftEngine out. 'extractive'
 * gives the model-free engine; 'llama-cpp' loads the GGUF once (start-up fails with the command to
 * obtain it when the file is missing); 'remote' talks to the site's inference server, through the
 * constrained-JSON adapter (MedGemma) or, with `remote.toolCalling: native`, the server's own tool calls.
 */
type ClosableDraftEngine = DraftEngine & {
  close(): Promise<void>;
  /** The constrained-JSON model's provider, shared with other model calls (pre-visit intake's follow-ups). */
  provider?: ModelProvider;
};

async function createModelProvider(config: ModelConfig, logger: Logger): Promise<ModelProvider | undefined> {
  const profile = modelProfiles[config.profile];
  switch (config.provider) {
    case 'extractive':
      return undefined;
    case 'llama-cpp': {
      const { LlamaCppProvider } = await import('./model/llama-cpp-provider.ts');
      return LlamaCppProvider.create({
        modelPath: config.llamaCpp.modelPath ?? profile.defaultModelPath,
        pullCommand: `${profile.pullCommand} (${profile.approximateDownload})`,
        contextSize: config.llamaCpp.contextSize ?? profile.contextSize,
        threads: config.llamaCpp.threads,
        gpuLayers: config.llamaCpp.gpuLayers,
        gpu: config.llamaCpp.gpu,
        sequences: config.llamaCpp.sequences,
        logger,
      });
    }
    case 'remote': {
      const { RemoteProvider } = await import('./model/remote-provider.ts');
      return new RemoteProvider({
        endpointUrl: config.remote.endpointUrl!,
        model: config.remote.model ?? profile.remoteModel,
        accessToken: config.remote.accessToken,
        contextSize: config.remote.contextSize ?? profile.contextSize,
        timeoutMs: config.remote.timeoutMs,
        retries: config.remote.retries,
      });
    }
  }
}

export async function createDraftEngine(
  config: ModelConfig,
  logger: Logger,
  options: { prompts?: PromptLibrary; fallback?: DraftEngine } = {},
): Promise<ClosableDraftEngine> {
  const fallback = options.fallback ?? createExtractiveEngine();
  if (config.provider === 'extractive')
    return {
      id: fallback.id,
      version: fallback.version,
      draft: (request) => fallback.draft(request),
      close: async () => {},
    };
  const [{ MedGemmaEngine }, { PromptLibrary }, { withExtractiveFallback }, { constrainedJsonModel }] =
    await Promise.all([
      import('../agents/medgemma-engine.ts'),
      import('../agents/prompt-library.ts'),
      import('../agents/engine-with-fallback.ts'),
      import('../agents/draft-model.ts'),
    ]);
  const prompts = options.prompts ?? PromptLibrary.load();
  let model: DraftModel;
  let close: () => Promise<void>;
  let provider: ModelProvider | undefined;
  if (config.provider === 'remote' && config.remote.toolCalling === 'native') {
    model = await nativeToolCallingModel(config);
    close = async () => {};
  } else {
    provider = (await createModelProvider(config, logger))!;
    model = constrainedJsonModel(provider, {
      prompts,
      // Whether vLLM and TGI accept a root oneOf in json_schema is unverified: remote gets the flat form.
      stepSchemaStyle: config.provider === 'remote' ? 'flat' : 'precise',
    });
    close = () => (provider as ModelProvider).close();
  }
  const engine = new MedGemmaEngine({ model, prompts, budget: config.agent, logger });
  const guarded = withExtractiveFallback(engine, fallback, logger);
  return {
    id: guarded.id,
    version: guarded.version,
    draft: (request) => guarded.draft(request),
    // The pipeline drafts with it when the verifier leaves the model's draft with no supported line.
    fallback,
    close,
    ...(provider ? { provider } : {}),
  };
}

/** A served model with native tool calling: the server's `tools` and `tool_calls`, the same agents. */
async function nativeToolCallingModel(config: ModelConfig): Promise<DraftModel> {
  const { OpenAICompatibleChatModel } = await import('./model/openai-compatible-chat-model.ts');
  const connection = {
    endpointUrl: config.remote.endpointUrl!,
    model: config.remote.model!,
    accessToken: config.remote.accessToken,
    timeoutMs: config.remote.timeoutMs,
    retries: config.remote.retries,
  };
  return {
    modelId: connection.model,
    contextSize: config.remote.contextSize ?? modelProfiles[config.profile].contextSize,
    countTokens: estimateTokens,
    protocolPrompts: [],
    createChatModel: ({ meter, maxTokens, temperature }) =>
      new OpenAICompatibleChatModel({ connection, maxTokens, temperature, meter }),
  };
}
