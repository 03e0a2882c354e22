import { z } from 'zod';
import { visionModelConfigSchema } from '../config/vision-config.ts';

/**
 * The `model` section of the configuration: which engine writes drafts, and the budgets that bound
 * every agent run. Profiles carry what differs between MedGemma 27B (summaries) and 4B (hosts
 * without the memory for 27B).
 */
export const modelProfiles = {
  'medgemma-27b': {
    pullCommand: 'npx node-llama-cpp pull hf:unsloth/medgemma-27b-text-it-GGUF:Q4_K_M',
    approximateDownload: 'about 16.5 GB',
    defaultModelPath: 'models/medgemma-27b-text-it-Q4_K_M.gguf',
    remoteModel: 'google/medgemma-27b-text-it',
    contextSize: 16_384,
  },
  'medgemma-4b': {
    pullCommand: 'npx node-llama-cpp pull hf:unsloth/medgemma-4b-it-GGUF:Q4_K_M',
    approximateDownload: 'about 2.5 GB',
    defaultModelPath: 'models/medgemma-4b-it-Q4_K_M.gguf',
    remoteModel: 'google/medgemma-4b-it',
    contextSize: 8_192,
  },
} as const;

export const agentBudgetSchema = z.object({
  /** Navigation steps (model turns choosing tools) before extraction starts regardless. */
  maxSteps: z.number().int().min(0).max(50).default(6),
  /** Tool calls across the run. */
  maxToolCalls: z.number().int().min(0).max(100).default(8),
  /** Model calls across the run, including repairs, extraction chunks and the write-up. */
  maxModelCalls: z.number().int().min(1).max(500).default(40),
  /** Prompt plus completion tokens across the run. */
  maxTotalTokens: z.number().int().min(1000).default(400_000),
  /**
   * Prompt tokens one draft may send in total (all calls), as a share of the patient's record as
   * naive JSON, between a floor and a ceiling: a summary sends a small fraction of the record.
   */
  promptShareOfRecord: z.number().min(0.01).max(1).default(0.08),
  minPromptTokensPerDraft: z.number().int().min(1000).default(2_000),
  maxPromptTokensPerDraft: z.number().int().min(1000).default(9_000),
  /** Ceiling for note and resource text, in tokens, that extraction reads per draft. */
  materialTokens: z.number().int().min(300).default(6_000),
  /** Output tokens per call; must cover the largest JSON a step may produce. */
  maxOutputTokens: z.number().int().min(64).default(1_536),
  /** JSON steps want 0 to 0.1. */
  temperature: z.number().min(0).max(1).default(0),
  /** Tokens left free in every call as a margin for template markup and tokenizer differences. */
  safetyMarginTokens: z.number().int().min(0).default(256),
});

export type AgentBudget = z.infer<typeof agentBudgetSchema>;

export const modelConfigSchema = z
  .object({
    /** 'extractive' (the model-free default), 'llama-cpp' (in process) or 'remote' (inference server). */
    provider: z.enum(['extractive', 'llama-cpp', 'remote']).default('extractive'),
    profile: z.enum(['medgemma-27b', 'medgemma-4b']).default('medgemma-27b'),
    llamaCpp: z
      .object({
        /** Unset takes the profile's (models/medgemma-27b-text-it-Q4_K_M.gguf), relative to the working directory. */
        modelPath: z.string().min(1).optional(),
        /** Tokens; unset takes the profile's (16k for 27B: MedGemma supports 128k but its KV cache is huge). */
        contextSize: z.number().int().min(512).optional(),
        /** Unset lets node-llama-cpp decide. */
        threads: z.number().int().min(1).optional(),
        gpuLayers: z.union([z.literal('auto'), z.number().int().min(0)]).default('auto'),
        gpu: z.union([z.literal('auto'), z.literal(false)]).default('auto'),
        /** Concurrent generations (jobs) sharing the loaded model. */
        sequences: z.number().int().min(1).max(16).default(2),
      })
      .prefault({}),
    remote: z
      .object({
        /** e.g. http://vllm:8000 (the client adds /v1/chat/completions). */
        endpointUrl: z.url().optional(),
        /** Unset takes the profile's model name. */
        model: z.string().min(1).optional(),
        /** Read from the environment by the config loader, never logged. */
        accessToken: z.string().min(1).optional(),
        contextSize: z.number().int().min(512).optional(),
        timeoutMs: z.number().int().min(1000).default(120_000),
        retries: z.number().int().min(0).max(5).default(1),
        /**
         * 'constrained-json' (MedGemma: no tool tokens; tool calls are JSON constrained by
         * `response_format`), or 'native' for a served model whose chat template has tool calling
         * (the server's `tools` and `tool_calls`); then `model` names it.
         */
        toolCalling: z.enum(['constrained-json', 'native']).default('constrained-json'),
      })
      .prefault({}),
    agent: agentBudgetSchema.prefault({}),
    /** MedGemma 4B multimodal reading the record's images (src/config/vision-config.ts); unset: no image is read. */
    vision: visionModelConfigSchema.optional(),
  })
  .superRefine((config, context) => {
    if (config.provider === 'remote' && !config.remote.endpointUrl) {
      context.addIssue({
        code: 'custom',
        path: ['remote', 'endpointUrl'],
        message: 'model.remote.endpointUrl is required when model.provider is "remote"',
      });
    }
    if (config.provider === 'remote' && config.remote.toolCalling === 'native' && !config.remote.model) {
      context.addIssue({
        code: 'custom',
        path: ['remote', 'model'],
        message:
          'model.remote.model must name the served model when model.remote.toolCalling is "native" (MedGemma has no native tool calling)',
      });
    }
  });

export type ModelConfig = z.infer<typeof modelConfigSchema>;
