import { existsSync } from 'node:fs';
import type { DraftEngine } from '../../agents/draft-engine.ts';
import { createDraftEngine } from '../draft-engine-factory.ts';
import type { Logger } from '../log.ts';
import { agentBudgetSchema, modelConfigSchema } from '../model/model-config.ts';
import type { ScriptedCooperativeModel } from './scripted-cooperative-model.ts';

/**
 * Engine configurations an evaluation compares, named on the command line: `extractive`, `scripted`
 * (the scripted cooperative model through the MedGemma agents), `llama-cpp:<gguf path>` (in process)
 * and `remote:<url>` (the site's inference server). Each is built the way the service builds it (the
 * draft-engine factory, with the extractive fallback), so the eval measures what production writes.
 */
export type ConfigurationSpec =
  | { kind: 'extractive'; name: string }
  | { kind: 'scripted'; name: string }
  | { kind: 'llama-cpp'; name: string; modelPath: string }
  | { kind: 'remote'; name: string; endpointUrl: string; model?: string };

export interface EvalConfiguration {
  spec: ConfigurationSpec;
  engine: DraftEngine;
  /** The scripted model, whose calls by stage the benchmark reads. */
  scripted?: ScriptedCooperativeModel;
  close(): Promise<void>;
}

export class ConfigurationError extends Error {}

/** `remote:<url>[#<model>]`: the url must be http(s); the model name defaults to the profile's. */
export function parseConfiguration(text: string): ConfigurationSpec {
  const value = text.trim();
  if (value === 'extractive') return { kind: 'extractive', name: 'extractive' };
  if (value === 'scripted') return { kind: 'scripted', name: 'scripted' };
  if (value.startsWith('llama-cpp:')) {
    const modelPath = value.slice('llama-cpp:'.length);
    if (!modelPath) throw new ConfigurationError('llama-cpp: needs a GGUF path (llama-cpp:models/x.gguf)');
    if (!existsSync(modelPath)) throw new ConfigurationError(`llama-cpp: no file at ${modelPath}`);
    return { kind: 'llama-cpp', name: `llama-cpp:${modelPath.split('/').pop()}`, modelPath };
  }
  if (value.startsWith('remote:')) {
    const [endpointUrl, model] = value.slice('remote:'.length).split('#');
    let url: URL;
    try {
      url = new URL(endpointUrl);
    } catch {
      throw new ConfigurationError(`remote: "${endpointUrl}" is not a URL`);
    }
    if (url.protocol !== 'http:' && url.protocol !== 'https:')
      throw new ConfigurationError('remote: the URL must be http or https');
    if (url.username || url.password)
      throw new ConfigurationError(
        'remote: put no credentials in the URL (use EHR_AGENT_MODEL__REMOTE__ACCESS_TOKEN)',
      );
    return {
      kind: 'remote',
      name: `remote:${url.host}${model ? `#${model}` : ''}`,
      endpointUrl: url.toString().replace(/\/+$/, ''),
      ...(model ? { model } : {}),
    };
  }
  throw new ConfigurationError(
    `unknown configuration "${value}": use extractive, scripted, llama-cpp:<gguf> or remote:<url>`,
  );
}

export async function createConfiguration(
  spec: ConfigurationSpec,
  logger: Logger,
): Promise<EvalConfiguration> {
  switch (spec.kind) {
    case 'extractive': {
      const engine = await createDraftEngine(modelConfigSchema.parse({}), logger);
      return { spec, engine, close: () => engine.close() };
    }
    case 'scripted': {
      // The agents are loaded only when a model configuration is evaluated, as the factory does.
      const [
        { withExtractiveFallback },
        { createExtractiveEngine },
        { MedGemmaEngine },
        { PromptLibrary },
        { ScriptedCooperativeModel },
      ] = await Promise.all([
        import('../../agents/engine-with-fallback.ts'),
        import('../../agents/extractive-engine.ts'),
        import('../../agents/medgemma-engine.ts'),
        import('../../agents/prompt-library.ts'),
        import('./scripted-cooperative-model.ts'),
      ]);
      const scripted = new ScriptedCooperativeModel();
      const fallback = createExtractiveEngine();
      const prompts = PromptLibrary.load();
      const model = new MedGemmaEngine({
        provider: scripted,
        prompts,
        budget: agentBudgetSchema.parse({}),
        logger,
      });
      // As the factory wires a model: the extractive fallback when the model's draft keeps nothing.
      const guarded = withExtractiveFallback(model, fallback, logger);
      const engine: DraftEngine = {
        id: guarded.id,
        version: guarded.version,
        draft: (request) => guarded.draft(request),
        fallback,
      };
      return { spec, engine, scripted, close: async () => {} };
    }
    case 'llama-cpp': {
      const { validateGgufFile } = await import('../model/gguf-header.ts');
      // A malformed file can abort the process inside llama.cpp: its header is checked first.
      const summary = await validateGgufFile(spec.modelPath);
      const engine = await createDraftEngine(
        modelConfigSchema.parse({
          provider: 'llama-cpp',
          llamaCpp: {
            modelPath: spec.modelPath,
            threads: 1,
            sequences: 1,
            ...(summary.contextLength ? { contextSize: Math.min(summary.contextLength, 16_384) } : {}),
          },
        }),
        logger,
      );
      return { spec, engine, close: () => engine.close() };
    }
    case 'remote': {
      const engine = await createDraftEngine(
        modelConfigSchema.parse({
          provider: 'remote',
          remote: {
            endpointUrl: spec.endpointUrl,
            ...(spec.model ? { model: spec.model } : {}),
            ...(process.env.EHR_AGENT_MODEL__REMOTE__ACCESS_TOKEN
              ? { accessToken: process.env.EHR_AGENT_MODEL__REMOTE__ACCESS_TOKEN }
              : {}),
          },
        }),
        logger,
      );
      return { spec, engine, close: () => engine.close() };
    }
  }
}
