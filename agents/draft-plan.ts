import { type PatientRecord, recordResources } from '../fhir/patient-record.ts';
import type { AgentBudget } from '../src/model/model-config.ts';
import { estimateTokens } from '../src/model/provider.ts';

/**
 * A draft's prompt budget, sized from the patient's record: a share of the record as naive JSON,
 * between a floor and a ceiling, split between the manifest, navigation after its first step, and
 * the material facts are extracted from. A summary should send a small fraction of the record.
 */
/** How a draft's prompt budget is shared: manifest, navigation steps after the first, material. */
const draftShares = { manifest: 0.22, navigation: 0.3, material: 0.3 };

/** The draft's plan: how many prompt tokens each stage may use, from the record's size. */
export interface DraftPlan {
  recordTokens: number;
  draftTokens: number;
  manifestTokens: number;
  navigationAllowance: number;
  materialTokens: number;
  /** Capped by the ceiling: summarised map-reduce with one navigation step. */
  large: boolean;
}

export function planDraft(record: PatientRecord, limits: AgentBudget): DraftPlan {
  // The record as naive JSON, at the same three characters per token the benchmark uses.
  const recordTokens = estimateTokens(JSON.stringify(recordResources(record)));
  const share = Math.round(recordTokens * limits.promptShareOfRecord);
  const draftTokens = Math.min(
    limits.maxPromptTokensPerDraft,
    Math.max(limits.minPromptTokensPerDraft, share),
  );
  return {
    recordTokens,
    draftTokens,
    manifestTokens: Math.max(250, Math.floor(draftTokens * draftShares.manifest)),
    navigationAllowance: Math.floor(draftTokens * draftShares.navigation),
    materialTokens: Math.max(
      300,
      Math.min(limits.materialTokens, Math.floor(draftTokens * draftShares.material)),
    ),
    large: share > limits.maxPromptTokensPerDraft,
  };
}
