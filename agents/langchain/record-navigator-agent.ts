import { createAgent, modelCallLimitMiddleware } from 'langchain';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { ModelProvider } from '../../src/model/provider.ts';
import { MedGemmaChatModel } from './medgemma-chat-model.ts';
import { createLangChainRecordTools } from './record-tools.ts';

/**
 * The record navigator as a LangChain agent: MedGemma through the constrained-JSON adapter, the
 * read-only record tools, and a model-call limit that ends the run quietly (`exitBehavior: "end"`,
 * where `recursionLimit` would throw). Useful where LangChain's middleware earns its place (human in
 * the loop, tracing); the MedGemma engine's own loop is the framework-free equivalent.
 */
export function createRecordNavigatorAgent(options: {
  provider: ModelProvider;
  record: PatientRecord;
  manifestText: string;
  maxModelCalls: number;
  maxTokens: number;
  systemPrompt: string;
  /** Cap for generated strings (the final answer may be twenty times this). */
  maxStringLength?: number;
}) {
  const model = new MedGemmaChatModel({
    provider: options.provider,
    maxTokens: options.maxTokens,
    temperature: 0,
    maxStringLength: options.maxStringLength,
  });
  const tools = createLangChainRecordTools(options.record, {
    manifestText: () => options.manifestText,
    maxNoteTokens: Math.floor(options.provider.contextSize / 6),
    countTokens: (text) => options.provider.countTokens(text),
  });
  return createAgent({
    model,
    tools,
    systemPrompt: options.systemPrompt,
    middleware: [modelCallLimitMiddleware({ runLimit: options.maxModelCalls, exitBehavior: 'end' })],
  });
}
