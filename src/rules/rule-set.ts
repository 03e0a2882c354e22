import type { CqlRuntime } from './cql-runtime.ts';
import type { CompiledFhirPath } from './fhirpath-compiler.ts';
import type { RuleDocument } from './rule-schema.ts';
import type { ValueSetIndex } from './value-sets.ts';

/** A rule set that loaded completely; the service never runs a half-loaded one. */
export type CompiledCriterion =
  | { id: string; description: string; kind: 'fhirpath'; fhirpath: CompiledFhirPath }
  | { id: string; description: string; kind: 'cql'; library: string; expression: string };

export interface CompiledRule {
  document: RuleDocument;
  /** The rule file, relative to the rules folder. */
  file: string;
  criteria: CompiledCriterion[];
  values: Map<string, CompiledFhirPath>;
  /** In file order: a define may use the ones before it. */
  defines: Map<string, CompiledFhirPath>;
  suppressionDays: number;
}

export interface RuleSet {
  directory: string;
  rules: CompiledRule[];
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
