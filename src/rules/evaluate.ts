import { createHash } from 'node:crypto';
import type { Encounter } from 'fhir/r4.js';
import type { NudgeInput } from '../../agents/draft-engine.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { cqlResultValues } from './cql-values.ts';
import {
  type CompiledFhirPath,
  compileFhirPath,
  dataProbes,
  type FhirPathEnvironment,
  fhirPathEnvironment,
} from './fhirpath-compiler.ts';
import type { NudgeStore } from './nudge-store.ts';
import type { RuleDocument, RuleTrigger, Severity, UrgencyLevel } from './rule-schema.ts';
import type { CompiledRule, RuleSet } from './rule-set.ts';
import { fillTemplate } from './template.ts';

/**
 * Runs a rule set over one patient's record: which rules fire, on which data, and which of the
 * fired nudges are shown (after suppression windows and the per-encounter cap). Rules decide;
 * nothing here words anything beyond filling the rule's own templates.
 */
export interface Nudge extends NudgeInput {
  /** Stable for (rule version, patient, occasion): the CDS card uuid, the key outcomes are recorded under. */
  id: string;
  patientId: string;
  occasionId: string;
  /** Card summary, under 140 characters. */
  summary: string;
  firedAt: string;
  /** Resources the card proposes to create (CDS Hooks suggestions), filled for this patient. */
  suggestions?: NudgeSuggestion[];
}

export interface NudgeSuggestion {
  label: string;
  isRecommended?: boolean;
  resource: Record<string, unknown> & { resourceType: string };
}

export interface CriterionResult {
  id: string;
  description: string;
  holds: boolean;
  /** `Type/id` of resources the criterion's expression returned. */
  evidence: string[];
  /** The expression's result, shortened for display. */
  result: unknown[];
  /** Not evaluated: an earlier criterion already decided the rule (only when not explaining). */
  skipped?: true;
  /**
   * When explaining: the record data the expression looked at (the resources its longest chain from a
   * `%variable` returned), described briefly: what made "no colonoscopy in 10 years" false.
   */
  seen?: string[];
}

export type RuleStatus =
  | 'fired'
  | 'not-fired'
  | 'not-triggered'
  /** The rule targets other encounters (class, type, location, department). */
  | 'not-applicable'
  | 'disabled'
  | 'suppressed'
  | 'capped'
  | 'error';

export interface RuleResult {
  ruleId: string;
  ruleVersion: string;
  status: RuleStatus;
  criteria: CriterionResult[];
  /** When suppressed: the earlier delivery, or the clinician's "not now" until a date. */
  suppressedBy?: { nudgeId: string; deliveredAt: string } | { snoozedUntil: string };
  /** Fired in silent mode: counted, never shown. */
  silent?: true;
  error?: string;
  nudge?: Nudge;
}

export interface VisitUrgency {
  level: UrgencyLevel;
  reasons: { ruleId: string; level: UrgencyLevel; reason: string }[];
}

export interface RuleEvaluation {
  /** What to show: fired, not suppressed, within the cap, most severe first. */
  nudges: Nudge[];
  results: RuleResult[];
  /** Highest urgency any fired rule sets for the upcoming visit (shown even when its nudge is suppressed). */
  urgency: VisitUrgency | undefined;
  ruleSetFingerprint: string;
}

export interface EvaluateOptions {
  trigger: RuleTrigger;
  now?: Date;
  /** With a store: suppression windows apply and shown nudges are recorded as delivered. */
  store?: NudgeStore;
  /** The encounter (default: the record's encounter id) or the occasion a patient-view stands for. */
  occasionId?: string;
  perEncounterCap?: number;
  /** Only these rules (for `rules test` and `rules explain`). */
  ruleIds?: string[];
  /** Ignore the trigger filter (for `rules explain` and backtests). */
  anyTrigger?: boolean;
  /** Evaluate every criterion even after the rule's outcome is decided (for `rules explain`). */
  explain?: boolean;
  /** CQL parameter values over every criterion's own (a backtest's or a test's measurement period). */
  cqlParameters?: Record<string, unknown>;
}

const severityRank: Record<Severity, number> = { critical: 0, warning: 1, info: 2 };
const urgencyRank: Record<UrgencyLevel, number> = { routine: 0, soon: 1, urgent: 2 };

export async function evaluateRules(
  ruleSet: RuleSet,
  record: PatientRecord,
  options: EvaluateOptions,
): Promise<RuleEvaluation> {
  const now = options.now ?? new Date();
  const patientId = record.patient.id ?? 'unknown';
  const occasionId = options.occasionId ?? record.encounter.id ?? `day:${now.toISOString().slice(0, 10)}`;
  const environment = fhirPathEnvironment(record, now);
  const cqlResults = new Map<string, Promise<Record<string, unknown>>>();
  const results: RuleResult[] = [];
  const candidates: { rule: CompiledRule; result: RuleResult; nudge: Nudge }[] = [];
  const urgencyReasons: VisitUrgency['reasons'] = [];
  const silentNudges: Nudge[] = [];

  for (const rule of ruleSet.rules) {
    const document = rule.document;
    if (options.ruleIds && !options.ruleIds.includes(document.id)) continue;
    const base = { ruleId: document.id, ruleVersion: document.version, criteria: [] as CriterionResult[] };
    if (!document.enabled) {
      results.push({ ...base, status: 'disabled' });
      continue;
    }
    if (!options.anyTrigger && !document.trigger.includes(options.trigger)) {
      results.push({ ...base, status: 'not-triggered' });
      continue;
    }
    if (!options.anyTrigger && !appliesTo(document.applies, record.encounter)) {
      results.push({ ...base, status: 'not-applicable' });
      continue;
    }
    try {
      // A rule reading data the server would not give cannot say "does not apply": that is an error.
      const unread = (record.unreadTypes ?? []).filter((unreadType) =>
        rule.dataRequirements.includes(unreadType.resourceType),
      );
      if (unread.length > 0)
        throw new Error(
          `the FHIR server refused to search ${unread.map((type) => `${type.resourceType} (HTTP ${type.status})`).join(', ')}, which this rule reads`,
        );
      const criteria = await evaluateCriteria(
        rule,
        ruleSet,
        record,
        environment,
        now,
        cqlResults,
        options.explain ?? false,
        options.cqlParameters,
      );
      const fires =
        document.condition.match === 'all'
          ? criteria.every((criterion) => criterion.holds && !criterion.skipped)
          : criteria.some((criterion) => criterion.holds);
      const result: RuleResult = { ...base, criteria, status: fires ? 'fired' : 'not-fired' };
      results.push(result);
      if (!fires) continue;
      const nudge = buildNudge(rule, record, environment, criteria, { patientId, occasionId, now });
      if (document.mode === 'silent') {
        // Counted (a delivery marked silent, for `rules stats`) but never shown, capped or suppressed.
        result.silent = true;
        silentNudges.push(nudge);
        continue;
      }
      if (nudge.urgency) urgencyReasons.push({ ruleId: document.id, ...nudge.urgency });
      candidates.push({ rule, result, nudge });
    } catch (error) {
      results.push({ ...base, status: 'error', error: evaluationErrorText(error) });
    }
  }

  const shown: Nudge[] = [];
  const cap = options.perEncounterCap ?? ruleSet.perEncounterCap;
  const ordered = candidates
    .map((candidate, order) => ({ ...candidate, order }))
    .sort(
      (left, right) =>
        severityRank[left.nudge.severity] - severityRank[right.nudge.severity] || left.order - right.order,
    );
  for (const { rule, result, nudge } of ordered) {
    // A clinician's "not now, for N days" holds whatever the rule's own window.
    const snoozedUntil = await options.store?.snoozedUntil(rule.document.id, patientId, now);
    if (snoozedUntil) {
      result.status = 'suppressed';
      result.suppressedBy = { snoozedUntil: snoozedUntil.toISOString() };
      continue;
    }
    if (options.store && rule.suppressionDays > 0) {
      const earlier = await options.store.lastDelivery(rule.document.id, patientId, occasionId);
      const windowStart = now.getTime() - rule.suppressionDays * 86_400_000;
      if (
        earlier &&
        earlier.deliveredAt.getTime() > windowStart &&
        earlier.deliveredAt.getTime() <= now.getTime()
      ) {
        result.status = 'suppressed';
        result.suppressedBy = { nudgeId: earlier.nudgeId, deliveredAt: earlier.deliveredAt.toISOString() };
        continue;
      }
    }
    if (shown.length >= cap) {
      result.status = 'capped';
      continue;
    }
    result.nudge = nudge;
    shown.push(nudge);
  }
  if (options.store) {
    for (const nudge of [...shown, ...silentNudges]) {
      await options.store.recordDelivery({
        nudgeId: nudge.id,
        ruleId: nudge.ruleId,
        ruleVersion: nudge.ruleVersion,
        patientId,
        occasionId,
        deliveredAt: now,
        ...(silentNudges.includes(nudge) ? { silent: true } : {}),
      });
    }
  }
  return {
    nudges: shown,
    results,
    urgency: visitUrgency(urgencyReasons),
    ruleSetFingerprint: ruleSet.fingerprint,
  };
}

/**
 * An evaluation error in words a rule author can act on, on one line (CQL errors already name the
 * library, define, line and the engine's own message: see CqlEvaluationError).
 */
export function evaluationErrorText(error: unknown): string {
  const text = error instanceof Error ? error.message : String(error);
  return text.trim().replace(/\s*\n\s*/g, ' ');
}

/** Built once: appliesTo runs for every rule on every encounter. */
const referencePattern = (type: string) =>
  new RegExp(`(?:^|/)${type}/([A-Za-z0-9\\-.]{1,64})(?:/_history/[^/]+)?$`);
const locationReference = referencePattern('Location');
const organizationReference = referencePattern('Organization');

/** Whether a rule's targeting (`applies`) matches the encounter; no targeting matches every encounter. */
export function appliesTo(applies: RuleDocument['applies'], encounter: Encounter): boolean {
  if (!applies) return true;
  const matches = (wanted: string[] | undefined, actual: string[]) =>
    wanted === undefined || wanted.some((entry) => actual.includes(entry));
  const typeCodes = (encounter.type ?? []).flatMap((type) =>
    (type.coding ?? []).flatMap((coding) =>
      coding.code ? [coding.code, `${coding.system ?? ''}|${coding.code}`] : [],
    ),
  );
  const idOf = (reference: string | undefined, pattern: RegExp) => pattern.exec(reference ?? '')?.[1];
  const locations = (encounter.location ?? []).flatMap((entry) => {
    const id = idOf(entry.location?.reference, locationReference);
    return id ? [id] : [];
  });
  const provider = idOf(encounter.serviceProvider?.reference, organizationReference);
  const serviceTypes = (encounter.serviceType?.coding ?? []).flatMap((coding) =>
    coding.code ? [coding.code, `${coding.system ?? ''}|${coding.code}`] : [],
  );
  return (
    matches(applies.encounterClasses, encounter.class?.code ? [encounter.class.code] : []) &&
    matches(applies.encounterTypes, typeCodes) &&
    matches(applies.locations, locations) &&
    matches(applies.departments, [...(provider ? [provider] : []), ...serviceTypes])
  );
}

/** The trigger an encounter event stands for (`encounter-<status>`), or undefined for statuses no rule runs on. */
export function triggerForEncounter(encounter: Pick<Encounter, 'status'>): RuleTrigger | undefined {
  const trigger = `encounter-${encounter.status}`;
  const known: string[] = [
    'encounter-planned',
    'encounter-arrived',
    'encounter-triaged',
    'encounter-in-progress',
    'encounter-finished',
  ];
  return known.includes(trigger) ? (trigger as RuleTrigger) : undefined;
}

/** What the draft engines take: the contract in agents/draft-engine.ts, without the engine's own fields. */
export function toNudgeInput(nudge: Nudge): NudgeInput {
  return {
    ruleId: nudge.ruleId,
    ruleVersion: nudge.ruleVersion,
    title: nudge.title,
    severity: nudge.severity,
    guideline: nudge.guideline,
    suggestedAction: nudge.suggestedAction,
    evidence: nudge.evidence,
    ...(nudge.urgency ? { urgency: nudge.urgency } : {}),
  };
}

export function nudgeId(ruleId: string, ruleVersion: string, patientId: string, occasionId: string): string {
  const hex = createHash('sha256')
    .update(`${ruleId}|${ruleVersion}|${patientId}|${occasionId}`)
    .digest('hex');
  // Shaped as a UUID because CDS Hooks card uuids are where clients expect one.
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/**
 * Runs an expression after the rule's defines it reads. Defines live in a per-rule copy of the
 * variables (rules must not see each other's names) and are computed at most once per patient.
 */
function evaluateWithDefines(
  rule: CompiledRule,
  compiled: CompiledFhirPath,
  environment: FhirPathEnvironment,
): unknown[] {
  if (compiled.definesUsed.length === 0) return compiled.evaluate(environment);
  let scoped = ruleScopes.get(environment)?.get(rule);
  if (!scoped) {
    scoped = { root: environment.root, variables: { ...environment.variables } };
    const byRule = ruleScopes.get(environment) ?? new Map<CompiledRule, FhirPathEnvironment>();
    byRule.set(rule, scoped);
    ruleScopes.set(environment, byRule);
  }
  const ensure = (name: string) => {
    if (name in scoped.variables) return;
    const define = rule.defines.get(name);
    if (!define) return;
    for (const dependency of define.definesUsed) ensure(dependency);
    scoped.variables[name] = define.evaluate(scoped);
  };
  for (const name of compiled.definesUsed) ensure(name);
  return compiled.evaluate(scoped);
}

const ruleScopes = new WeakMap<FhirPathEnvironment, Map<CompiledRule, FhirPathEnvironment>>();

async function evaluateCriteria(
  rule: CompiledRule,
  ruleSet: RuleSet,
  record: PatientRecord,
  environment: FhirPathEnvironment,
  now: Date,
  cqlResults: Map<string, Promise<Record<string, unknown>>>,
  explain: boolean,
  parameterOverrides: Record<string, unknown> | undefined,
): Promise<CriterionResult[]> {
  const results: CriterionResult[] = [];
  // `all` is decided by the first criterion that fails, `any` by the first that holds: the rest are
  // skipped, which is most of the saving for a patient a rule does not apply to (write cheap criteria first).
  const decidingValue = rule.document.condition.match !== 'all';
  let decided = false;
  for (const criterion of rule.criteria) {
    if (decided && !explain) {
      results.push({
        id: criterion.id,
        description: criterion.description,
        holds: false,
        evidence: [],
        result: [],
        skipped: true,
      });
      continue;
    }
    let values: unknown[];
    let seen: string[] | undefined;
    if (criterion.kind === 'fhirpath') {
      values = evaluateWithDefines(rule, criterion.fhirpath, environment);
      // What a criterion that did not hold looked at: the reason it did not hold is usually in there.
      if (explain && !truth(values)) seen = dataSeen(rule, ruleSet, criterion.fhirpath, environment);
    } else {
      if (!ruleSet.cql) throw new Error('rule set has no CQL runtime');
      const parameters = { ...criterion.parameters, ...parameterOverrides };
      // A library runs once per patient per set of parameter values, whatever number of criteria read it.
      const key = `${criterion.library}\0${JSON.stringify(parameters)}`;
      let libraryResults = cqlResults.get(key);
      if (!libraryResults) {
        libraryResults = ruleSet.cql.evaluate(criterion.library, record, now, parameters);
        cqlResults.set(key, libraryResults);
      }
      values = cqlResultValues((await libraryResults)[criterion.expression]);
    }
    const holds = truth(values);
    if (holds === decidingValue) decided = true;
    results.push({
      id: criterion.id,
      description: criterion.description,
      holds,
      evidence: evidenceOf(values),
      result: values.slice(0, 10).map(shorten),
      ...(seen && seen.length > 0 ? { seen } : {}),
    });
  }
  return results;
}

const probesByExpression = new WeakMap<CompiledFhirPath, CompiledFhirPath[]>();

/** The resources the longest record-reading chain of the expression returned (see dataProbes). */
function dataSeen(
  rule: CompiledRule,
  ruleSet: RuleSet,
  compiled: CompiledFhirPath,
  environment: FhirPathEnvironment,
): string[] {
  let probes = probesByExpression.get(compiled);
  if (!probes) {
    const defineTypes = new Map([...rule.defines].map(([name, define]) => [name, define.resultType]));
    probes = dataProbes(compiled.expression).flatMap((probe) => {
      try {
        return [compileFhirPath(probe, ruleSet.valueSets, [...rule.defines.keys()], defineTypes)];
      } catch {
        return [];
      }
    });
    probesByExpression.set(compiled, probes);
  }
  for (const probe of probes) {
    // The patient is always there: what matters is the clinical data.
    const resources = evaluateWithDefines(rule, probe, environment).filter(
      (value): value is Record<string, unknown> =>
        Boolean(value) &&
        typeof value === 'object' &&
        'resourceType' in (value as object) &&
        (value as { resourceType: unknown }).resourceType !== 'Patient',
    );
    if (resources.length > 0) return resources.slice(0, 10).map(describeResource);
  }
  return [];
}

/** `Procedure/x (Colonoscopy, 2014-05-01)`: what a reviewer needs to find the resource and see why it counted. */
function describeResource(resource: Record<string, unknown>): string {
  const concept = (resource.code ?? resource.vaccineCode ?? resource.medicationCodeableConcept) as
    | { text?: string; coding?: { display?: string; code?: string }[] }
    | undefined;
  const name = concept?.text ?? concept?.coding?.[0]?.display ?? concept?.coding?.[0]?.code;
  const period = (resource.effectivePeriod ?? resource.performedPeriod ?? resource.period) as
    | { start?: string }
    | undefined;
  const date = [
    resource.effectiveDateTime,
    resource.performedDateTime,
    resource.occurrenceDateTime,
    resource.authoredOn,
    resource.onsetDateTime,
    resource.recordedDate,
    resource.issued,
    period?.start,
    resource.date,
  ].find((candidate): candidate is string => typeof candidate === 'string');
  const details = [name, date?.slice(0, 10)].filter(Boolean).join(', ');
  return `${resource.resourceType}/${String(resource.id)}${details ? ` (${details})` : ''}`;
}

/** A single boolean is itself; otherwise a criterion holds when its expression returned anything. */
function truth(values: unknown[]): boolean {
  if (values.length === 1 && typeof values[0] === 'boolean') return values[0];
  return values.length > 0;
}

function evidenceOf(values: unknown[]): string[] {
  const references = new Set<string>();
  for (const value of values) {
    if (value && typeof value === 'object' && 'resourceType' in value && 'id' in value) {
      const resource = value as { resourceType: string; id: unknown };
      if (typeof resource.id === 'string') references.add(`${resource.resourceType}/${resource.id}`);
    }
  }
  return [...references];
}

function shorten(value: unknown): unknown {
  if (value && typeof value === 'object' && 'resourceType' in value) {
    const resource = value as { resourceType: string; id?: string };
    return `${resource.resourceType}/${resource.id ?? '?'}`;
  }
  return value;
}

function buildNudge(
  rule: CompiledRule,
  record: PatientRecord,
  environment: FhirPathEnvironment,
  criteria: CriterionResult[],
  occasion: { patientId: string; occasionId: string; now: Date },
): Nudge {
  const document = rule.document;
  const values: Record<string, string | undefined> = {
    age: ageInYears(record.patient.birthDate, occasion.now)?.toString(),
    gender: record.patient.gender,
  };
  for (const [name, compiled] of rule.values) {
    values[name] = displayValue(evaluateWithDefines(rule, compiled, environment)[0]);
  }
  const evidence = [
    ...new Set(criteria.filter((criterion) => criterion.holds).flatMap((criterion) => criterion.evidence)),
  ];
  const summary = fillTemplate(document.summary ?? document.title, values);
  return {
    id: nudgeId(document.id, document.version, occasion.patientId, occasion.occasionId),
    patientId: occasion.patientId,
    occasionId: occasion.occasionId,
    ruleId: document.id,
    ruleVersion: document.version,
    title: document.title,
    summary: summary.length < 140 ? summary : `${summary.slice(0, 136)}...`,
    severity: document.severity,
    guideline: document.guideline,
    suggestedAction: fillTemplate(document.suggestedAction, values),
    // A nudge always cites something retrieved: the patient, when its criteria were all absences.
    evidence: evidence.length > 0 ? evidence : [`Patient/${occasion.patientId}`],
    ...(document.urgency
      ? { urgency: { level: document.urgency.level, reason: fillTemplate(document.urgency.reason, values) } }
      : {}),
    firedAt: occasion.now.toISOString(),
    ...(document.suggestions.length > 0
      ? {
          suggestions: document.suggestions.map((suggestion) => ({
            label: fillTemplate(suggestion.label, values),
            ...(suggestion.isRecommended !== undefined ? { isRecommended: suggestion.isRecommended } : {}),
            resource: proposedResource(suggestion.resource, values, record, occasion.now),
          })),
        }
      : {}),
  };
}

/**
 * A suggestion's resource for this patient: templates filled, the patient and encounter referenced, and
 * a proposal's status and intent unless the rule set them (a card proposes; a clinician orders).
 */
function proposedResource(
  template: RuleDocument['suggestions'][number]['resource'],
  values: Record<string, string | undefined>,
  record: PatientRecord,
  now: Date,
): NudgeSuggestion['resource'] {
  const fill = (value: unknown): unknown => {
    if (typeof value === 'string') return fillTemplate(value, values);
    if (Array.isArray(value)) return value.map(fill);
    if (value && typeof value === 'object')
      return Object.fromEntries(Object.entries(value).map(([key, inner]) => [key, fill(inner)]));
    return value;
  };
  const resource = fill(template) as NudgeSuggestion['resource'];
  const patient = { reference: `Patient/${record.patient.id}` };
  const encounter =
    record.encounter.id && !record.encounter.id.startsWith('none-') && record.encounter.id !== 'patient-view'
      ? { reference: `Encounter/${record.encounter.id}` }
      : undefined;
  switch (resource.resourceType) {
    case 'ImmunizationRecommendation':
      return { ...resource, patient, date: resource.date ?? now.toISOString() };
    case 'Task':
      return {
        status: 'draft',
        intent: 'proposal',
        ...resource,
        for: patient,
        ...(encounter ? { encounter } : {}),
        authoredOn: now.toISOString(),
      };
    case 'CommunicationRequest':
      return { status: 'draft', ...resource, subject: patient, ...(encounter ? { encounter } : {}) };
    default:
      return {
        status: 'draft',
        intent: 'proposal',
        ...resource,
        subject: patient,
        ...(encounter ? { encounter } : {}),
        authoredOn: now.toISOString(),
      };
  }
}

function visitUrgency(reasons: VisitUrgency['reasons']): VisitUrgency | undefined {
  if (reasons.length === 0) return undefined;
  const sorted = [...reasons].sort((left, right) => urgencyRank[right.level] - urgencyRank[left.level]);
  return { level: sorted[0].level, reasons: sorted };
}

export function ageInYears(birthDate: string | undefined, now: Date): number | undefined {
  if (!birthDate) return undefined;
  const [year, month = 1, day = 1] = birthDate.split('-').map(Number);
  let age = now.getUTCFullYear() - year;
  const beforeBirthday =
    now.getUTCMonth() + 1 < month || (now.getUTCMonth() + 1 === month && now.getUTCDate() < day);
  if (beforeBirthday) age -= 1;
  return age;
}

function displayValue(value: unknown): string | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'object') return String(value);
  const object = value as Record<string, unknown>;
  if ('value' in object && typeof object.value === 'number') {
    return `${object.value}${object.unit ? ` ${object.unit}` : ''}`;
  }
  if (typeof object.text === 'string') return object.text;
  const coding = (object.coding as { display?: string; code?: string }[] | undefined)?.[0];
  if (coding) return coding.display ?? coding.code;
  if (typeof object.display === 'string') return object.display;
  if ('resourceType' in object) return `${object.resourceType}/${object.id}`;
  return JSON.stringify(value).slice(0, 80);
}
