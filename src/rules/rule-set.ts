import type { CqlRuntime } from './cql-runtime.ts';
import type { CompiledFhirPath } from './fhirpath-compiler.ts';
import type { RuleDocument } from './rule-schema.ts';
import type { ValueSetIndex } from './value-sets.ts';

/** A rule set that loaded completely; the service never runs a half-loaded one. */
export type CompiledCriterion =
  | { id: string; description: string; kind: 'fhirpath'; fhirpath: CompiledFhirPath }
  | {
      id: string;
      description: string;
      kind: 'cql';
      library: string;
      expression: string;
      parameters: Record<string, unknown>;
    };

export interface CompiledRule {
  document: RuleDocument;
  /** The rule file, relative to the rules folder. */
  file: string;
  criteria: CompiledCriterion[];
  values: Map<string, CompiledFhirPath>;
  /** In file order: a define may use the ones before it. */
  defines: Map<string, CompiledFhirPath>;
  /** Resource types its CQL reads (every Retrieve, through included libraries). */
  dataRequirements: string[];
  /**
   * Hash of what decides whether it fires: triggers, defines, criteria, the CQL it runs and the codes of
   * the value sets it names. Wording, severity and tests are not logic. One version, one logic.
   */
  logicFingerprint: string;
  /** Line of `version:` in the rule file, where a logic change under an old version is reported. */
  versionLine: number | undefined;
  suppressionDays: number;
}

export interface RuleSet {
  directory: string;
  rules: CompiledRule[];
  /**
   * Types the enabled rules read that the standard history does not load (MedicationStatement...):
   * retrieval, CDS Hooks prefetch, backtests and explain load them for every patient.
   */
  additionalResourceTypes: string[];
  valueSets: ValueSetIndex;
  cql: CqlRuntime | undefined;
  /** Hash of every file the set was built from: the "config version" that keys drafted work. */
  fingerprint: string;
  loadedAt: Date;
  perEncounterCap: number;
}

export interface RuleLoadError {
  /** Path of the file at fault (relative to the working directory when possible). */
  file: string;
  line: number | undefined;
  column?: number;
  message: string;
}

export type RuleSetLoadResult = { ok: true; ruleSet: RuleSet } | { ok: false; errors: RuleLoadError[] };

export function formatLoadError(error: RuleLoadError): string {
  const where =
    error.line === undefined
      ? error.file
      : `${error.file}:${error.line}${error.column ? `:${error.column}` : ''}`;
  return `${where}: ${error.message}`;
}

/** The serving set as operators see it (`GET /api/rules`, metrics): which logic runs, not the logic itself. */
export interface RuleSetSummary {
  fingerprint: string;
  loadedAt: Date;
  rules: { id: string; version: string; title: string; enabled: boolean; mode: 'active' | 'silent' }[];
}

export function summarizeRuleSet(ruleSet: RuleSet): RuleSetSummary {
  return {
    fingerprint: ruleSet.fingerprint,
    loadedAt: ruleSet.loadedAt,
    rules: ruleSet.rules.map((rule) => ({
      id: rule.document.id,
      version: rule.document.version,
      title: rule.document.title,
      enabled: rule.document.enabled,
      mode: rule.document.mode,
    })),
  };
}
