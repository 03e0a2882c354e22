import type { BaseChatModel, BaseChatModelCallOptions } from '@langchain/core/language_models/chat_models';
import type { ChatCallSettings, ModelCallMeter, ModelProvider } from '../src/model/provider.ts';
import { MedGemmaChatModel } from './langchain/medgemma-chat-model.ts';
import type { StepSchemaStyle } from './langchain/step-protocol.ts';
import type { PromptLibrary } from './prompt-library.ts';

/**
 * The chat model a draft is written with, as the engine sees it: a LangChain chat model (tool calls
 * through bindTools, structured answers through `responseFormat`) made for one run, so every call it
 * makes is metered against that run's context and budget. MedGemma gets the constrained-JSON adapter;
 * a model with native tool calling plugs in through the same interface, with the same tools, patient
 * guard, prompts and verification.
 */
type DraftCallOptions = BaseChatModelCallOptions & ChatCallSettings;
export type DraftChatModel = BaseChatModel<DraftCallOptions>;

export interface DraftModel {
  readonly modelId: string;
  /** Tokens the model sees at once; every call's prompt plus output must fit. */
  readonly contextSize: number;
  /** Exact when the backend has the tokenizer at hand, else an estimate. */
  countTokens(text: string): number;
  createChatModel(settings: {
    meter: ModelCallMeter;
    maxTokens: number;
    temperature: number;
  }): DraftChatModel;
  /** Prompt templates the model's own tool-call protocol shows the model, for the Provenance. */
  readonly protocolPrompts: readonly { id: string; version: string }[];
}

/** MedGemma (or any model without tool tokens) through the constrained-JSON adapter. */
export function constrainedJsonModel(
  provider: ModelProvider,
  options: { prompts: PromptLibrary; stepSchemaStyle?: StepSchemaStyle; maxStringLength?: number },
): DraftModel {
  const protocolPrompt = options.prompts.get('tool-call-protocol');
  return {
    modelId: provider.modelId,
    contextSize: provider.contextSize,
    countTokens: (text) => provider.countTokens(text),
    protocolPrompts: [{ id: protocolPrompt.id, version: protocolPrompt.version }],
    createChatModel: ({ meter, maxTokens, temperature }) =>
      new MedGemmaChatModel({
        provider,
        protocolPrompt,
        maxTokens,
        temperature,
        meter,
        maxStringLength: options.maxStringLength,
        stepSchemaStyle: options.stepSchemaStyle,
      }),
  };
}
