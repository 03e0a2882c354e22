import type { DraftChatModel } from '../draft-model.ts';
import { type Fact, type OutputLimits, tokensPerCitation } from '../output-schemas.ts';
import type { PromptLibrary } from '../prompt-library.ts';
import type { RunBudget } from '../run-budget.ts';

/** What the structured stages (extract, reduce, write) share within one draft run. */
export interface StageContext {
  /** The run's chat model: every call metered by `budget`. */
  chatModel: DraftChatModel;
  budget: RunBudget;
  prompts: PromptLibrary;
  countTokens: (text: string) => number;
  limits: OutputLimits;
  /** Output tokens of every structured call. */
  maxTokens: number;
  signal?: AbortSignal;
}

/** Facts per chunk: enough to say something, few enough that all chunks' facts fit the write-up. */
export function factsPerChunk(context: StageContext, chunkCount: number): number {
  const { limits, maxTokens } = context;
  const tokensPerFact = Math.ceil(limits.maxFactLength / 4) + limits.maxCitationsPerLine * tokensPerCitation;
  const byOutput = Math.floor((maxTokens - 20) / tokensPerFact);
  const byWriteUp = Math.floor(
    context.budget.promptCapacity(maxTokens) / 2 / Math.max(1, chunkCount) / tokensPerFact,
  );
  return Math.max(2, Math.min(limits.maxFactsPerChunk, byOutput, byWriteUp));
}

/** A fact may cite only what its source showed; a fact left citing nothing is dropped. */
export function citingOnly(facts: Fact[], references: readonly string[]): Fact[] {
  return facts
    .map((fact) => ({
      fact: fact.fact,
      citations: fact.citations.filter((citation) => references.includes(citation)),
    }))
    .filter((fact) => fact.citations.length > 0);
}
