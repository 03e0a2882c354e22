import { join } from 'node:path';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { createDraftEngine } from '../../src/draft-engine-factory.ts';
import { silentLogger } from '../../src/log.ts';
import { LlamaCppProvider } from '../../src/model/llama-cpp-provider.ts';
import { modelConfigSchema } from '../../src/model/model-config.ts';
import {
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { repoRoot } from '../support/shared-fixtures.ts';
import { writeTinyGguf } from '../support/tiny-gguf.ts';

let server: ScriptedInferenceServer | undefined;
afterEach(async () => {
  vi.restoreAllMocks();
  await server?.close();
  server = undefined;
});

describe('draft engine from the model config section', () => {
  it('defaults to the extractive engine', async () => {
    const engine = await createDraftEngine(modelConfigSchema.parse({}), silentLogger());
    expect(engine.id).toBe('extractive');
    const result = await engine.draft({ kind: 'progress-summary', record: buildPatientRecord(), nudges: [] });
    expect(result.engine.id).toBe('extractive');
    await engine.close();
  });

  it('requires an endpoint for the remote provider', () => {
    expect(modelConfigSchema.safeParse({ provider: 'remote' }).success).toBe(false);
  });

  it('stops start-up when the GGUF is missing, naming the pull command of the profile', async () => {
    const config = modelConfigSchema.parse({
      provider: 'llama-cpp',
      profile: 'medgemma-4b',
      llamaCpp: { modelPath: join(repoRoot, 'test', '.generated', 'missing.gguf'), gpu: false },
    });
    await expect(createDraftEngine(config, silentLogger())).rejects.toThrow(
      'npx node-llama-cpp pull hf:unsloth/medgemma-4b-it-GGUF:Q4_K_M',
    );
  });

  it('loads a GGUF once for the llama-cpp provider, drafts with that one model, and closes it', async () => {
    const create = vi.spyOn(LlamaCppProvider, 'create');
    const generate = vi.spyOn(LlamaCppProvider.prototype, 'generate');
    const close = vi.spyOn(LlamaCppProvider.prototype, 'close');
    const config = modelConfigSchema.parse({
      provider: 'llama-cpp',
      llamaCpp: {
        modelPath: writeTinyGguf(),
        contextSize: 2048,
        threads: 1,
        gpuLayers: 0,
        gpu: false,
        sequences: 1,
      },
      // One structured call per draft at most: navigation and extraction are not what is under test.
      agent: { maxSteps: 0, maxModelCalls: 1, maxOutputTokens: 64 },
    });
    const engine = await createDraftEngine(config, silentLogger());
    expect(engine.id).toBe('medgemma-agent');
    expect(create).toHaveBeenCalledTimes(1);
    const loaded = await create.mock.results[0].value;
    for (const kind of ['progress-summary', 'previsit-briefing'] as const)
      await engine.draft({ kind, record: buildPatientRecord(), nudges: [] });
    expect(create).toHaveBeenCalledTimes(1);
    expect(generate.mock.contexts.length).toBeGreaterThanOrEqual(2);
    for (const provider of generate.mock.contexts) expect(provider).toBe(loaded);

    expect(close).not.toHaveBeenCalled();
    await engine.close();
    expect(close).toHaveBeenCalledTimes(1);
    expect(close.mock.contexts[0]).toBe(loaded);
    // Closed for real: the model's context is gone, so nothing can generate with it any more.
    await expect(
      loaded.generate({ messages: [{ role: 'user', content: 'x' }], maxTokens: 4 }),
    ).rejects.toThrow();
  });

  it('falls back to the extractive draft when the model output stays invalid, and rethrows what a retry may fix', async () => {
    server = await startScriptedInferenceServer([], { content: 'not json at all' });
    const config = modelConfigSchema.parse({
      provider: 'remote',
      remote: { endpointUrl: server.url, retries: 0 },
    });
    const engine = await createDraftEngine(config, silentLogger());
    const result = await engine.draft({ kind: 'progress-summary', record: buildPatientRecord(), nudges: [] });
    expect(result.engine.id).toBe('extractive');
    // Navigation (twice) and extraction (twice) were tried first.
    expect(server.requests.length).toBeGreaterThanOrEqual(4);
    expect(server.requests[0].body.model).toBe('google/medgemma-27b-text-it');
    await server.close();

    server = await startScriptedInferenceServer([], { status: 503, error: 'overloaded' });
    const unavailable = await createDraftEngine(
      modelConfigSchema.parse({ provider: 'remote', remote: { endpointUrl: server.url, retries: 0 } }),
      silentLogger(),
    );
    await expect(
      unavailable.draft({ kind: 'progress-summary', record: buildPatientRecord(), nudges: [] }),
    ).rejects.toMatchObject({
      isRetryable: true,
      status: 503,
    });
  });
});
