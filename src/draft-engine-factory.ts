import type { DraftEngine } from '../agents/draft-engine.ts';
import { createExtractiveEngine } from '../agents/extractive-engine.ts';
import type { PromptLibrary } from '../agents/prompt-library.ts';
import type { Logger } from './log.ts';
import { type ModelConfig, modelProfiles } from './model/model-config.ts';
import type { ModelProvider } from './model/provider.ts';

// The model stack (node-llama-cpp, the inference client, the agents) is loaded only when a model is
// configured: the extractive default, and intake-only replicas, do not carry its memory.

/**
 * Wiring for the composition root: the `model` config section in, a DraftEngine out. 'extractive'
 * gives the model-free engine; 'llama-cpp' loads the GGUF once (start-up fails with the command to
 * obtain it when the file is missing); 'remote' talks to the site's inference server.
 */
export type ClosableDraftEngine = DraftEngine & { close(): Promise<void> };

export async function createModelProvider(
  config: ModelConfig,
  logger: Logger,
): Promise<ModelProvider | undefined> {
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
  const provider = await createModelProvider(config, logger);
  if (!provider)
    return {
      id: fallback.id,
      version: fallback.version,
      draft: (request) => fallback.draft(request),
      close: async () => {},
    };
  const [{ MedGemmaEngine }, { PromptLibrary }, { withExtractiveFallback }] = await Promise.all([
    import('../agents/medgemma-engine.ts'),
    import('../agents/prompt-library.ts'),
    import('../agents/engine-with-fallback.ts'),
  ]);
  const engine = new MedGemmaEngine({
    provider,
    prompts: options.prompts ?? PromptLibrary.load(),
    budget: config.agent,
    logger,
    // Whether vLLM and TGI accept a root oneOf in json_schema is unverified: remote gets the flat form.
    stepSchemaStyle: config.provider === 'remote' ? 'flat' : 'precise',
  });
  const guarded = withExtractiveFallback(engine, fallback, logger);
  return {
    id: guarded.id,
    version: guarded.version,
    draft: (request) => guarded.draft(request),
    // The pipeline drafts with it when the verifier leaves the model's draft with no supported line.
    fallback,
    close: () => provider.close(),
  };
}
