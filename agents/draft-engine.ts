import type { PatientRecord } from '../fhir/patient-record.ts';
import type { CitationVerification } from './citation-verifier.ts';

/**
 * What every draft engine (the model-free extractive engine, the MedGemma agents) offers the
 * pipeline: a patient record in, a cited text out. The pipeline verifies citations and writes.
 */
export type DraftKind = 'progress-summary' | 'previsit-briefing';

/** A nudge that a rule decided applies; the engine only words it (rules decide, the model words). */
export interface NudgeInput {
  ruleId: string;
  ruleVersion: string;
  title: string;
  severity: 'info' | 'warning' | 'critical';
  guideline: { label: string; url: string; recommendation: string; grade?: string };
  /** Suggested action, already filled from the rule's template. */
  suggestedAction: string;
  /** `Type/id` of the patient data that made the rule fire. */
  evidence: string[];
  /** Urgency of an upcoming visit, when the rule sets one. */
  urgency?: { level: 'routine' | 'soon' | 'urgent'; reason: string };
}

export interface DraftRequest {
  kind: DraftKind;
  record: PatientRecord;
  nudges: NudgeInput[];
  signal?: AbortSignal;
}

export interface DraftResult {
  kind: DraftKind;
  title: string;
  /** Plain text; every line that states a fact ends with one or more `[Type/id]` citations. */
  text: string;
  /** Which engine wrote it, for the Device author and the stable identifier. */
  engine: { id: string; version: string; model?: string };
  /** The prompt template used, when a model wrote it (goes into the AI Provenance). */
  prompt?: { id: string; version: string; rendered?: string };
  /** Every prompt template a model run used (navigation, extraction, write-up), for the AI Provenance. */
  prompts?: { id: string; version: string }[];
  verification: CitationVerification;
  usage?: { modelCalls: number; promptTokens: number; completionTokens: number };
}

export interface DraftEngine {
  readonly id: string;
  readonly version: string;
  draft(request: DraftRequest): Promise<DraftResult>;
}
