import type { PatientRecord } from '../fhir/patient-record.ts';

/**
 * What every draft engine (the model-free extractive engine, the MedGemma agents) offers the
 * pipeline: a patient record in, a cited text out. Engines do not verify their own text: the
 * pipeline's verification stage checks every engine's text against what the run read, and only
 * what it keeps is written.
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
  /**
   * Plain text, unverified; every line that states a fact should end with one or more `[Type/id]`
   * citations. The pipeline removes lines that do not, before anything is written.
   */
  text: string;
  /**
   * The heading lines this draft kind's template emits, exactly (e.g. `## Results`): the only lines,
   * besides blank ones, that need no citation. Never a pattern: text shaped like a heading is verified.
   */
  headings: readonly string[];
  /**
   * When the engine showed a model only part of the record: the `Type/id`s it showed. The draft may
   * then cite only these (narrowing what the record allows, never widening it).
   */
  shown?: readonly string[];
  /** Which engine wrote it, for the Device author and the stable identifier. */
  engine: { id: string; version: string; model?: string };
  /** The prompt template used, when a model wrote it (goes into the AI Provenance). */
  prompt?: { id: string; version: string; rendered?: string };
  /** Every prompt template a model run used (navigation, extraction, write-up), for the AI Provenance. */
  prompts?: { id: string; version: string }[];
  usage?: { modelCalls: number; promptTokens: number; completionTokens: number };
  /** The engine set something aside the reviewer must know of (an image read dropped as unusable): the draft is flagged. */
  flagged?: boolean;
}

export interface DraftEngine {
  readonly id: string;
  readonly version: string;
  draft(request: DraftRequest): Promise<DraftResult>;
  /** The engine whose draft the pipeline writes instead when this one's keeps no supported line. */
  readonly fallback?: DraftEngine;
}
