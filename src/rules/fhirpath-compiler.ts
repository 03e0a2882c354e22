import { createRequire } from 'node:module';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { checkPaths, FhirPathPathError, type FhirPathType } from './fhirpath-paths.ts';
import type { ValueSetIndex } from './value-sets.ts';

/**
 * FHIRPath with HL7's `fhirpath` package and its R4 model, compiled once per expression at load.
 * Loaded through require on purpose: the package's ESM bundle and its `src/types.js` are separate
 * copies of the same classes, and the clock functions below must build dates of the engine's own
 * classes. `today()` and `now()` read the evaluation instant from the environment, so a backtest or
 * a fixture with a fixed date gets the same answer on any day.
 */
const require = createRequire(import.meta.url);
const fhirpath = require('fhirpath') as typeof import('fhirpath');
const r4Model = require('fhirpath/fhir-context/r4') as import('fhirpath').Model;
const fhirpathTypes = require('fhirpath/src/types.js') as {
  FP_Date: { new (context: unknown, value: string): unknown; isoDate(date: Date): string };
  FP_DateTime: { new (context: unknown, value: string): unknown; isoDateTime(date: Date): string };
  ResourceNode: { new (...args: never[]): { data: unknown } };
};

/** Variables every expression can use; the root (`%context`) is the Patient. */
export const environmentVariables = [
  'patient',
  'encounter',
  'conditions',
  'medications',
  'allergies',
  'observations',
  'encounters',
  'procedures',
  'immunizations',
  'documents',
  // What MedSigLIP saw in the record's images (labels over the site's threshold), as preliminary Observations.
  'imageFindings',
  // The patient's pre-visit answers (src/patient-intake/), loaded with the record when a rule names them.
  'questionnaireResponses',
] as const;

const evaluationInstantVariable = 'evaluationInstant';

export interface FhirPathEnvironment {
  root: unknown;
  variables: Record<string, unknown>;
}

export function fhirPathEnvironment(record: PatientRecord, now: Date): FhirPathEnvironment {
  return {
    root: record.patient,
    variables: {
      patient: record.patient,
      encounter: record.encounter,
      conditions: record.conditions,
      medications: record.medications,
      allergies: record.allergies,
      observations: record.observations,
      encounters: record.encounters,
      procedures: record.procedures,
      immunizations: record.immunizations,
      documents: record.noteResources,
      imageFindings: record.imageFindings ?? [],
      questionnaireResponses: (record.additional ?? []).filter(
        (resource) => resource.resourceType === 'QuestionnaireResponse',
      ),
      [evaluationInstantVariable]: now,
      // Shared by every expression run for this patient, so `now() - 6 months` is built once.
      [instantCacheVariable]: new Map<string, unknown>(),
    },
  };
}

/** The FHIR type of each environment variable, for checking element names at load. */
const variableTypes: Record<string, string> = {
  patient: 'Patient',
  encounter: 'Encounter',
  conditions: 'Condition',
  medications: 'MedicationRequest',
  allergies: 'AllergyIntolerance',
  observations: 'Observation',
  encounters: 'Encounter',
  procedures: 'Procedure',
  immunizations: 'Immunization',
  documents: 'DocumentReference',
  imageFindings: 'Observation',
  questionnaireResponses: 'QuestionnaireResponse',
  context: 'Patient',
  resource: 'Patient',
  rootResource: 'Patient',
};

export interface CompiledFhirPath {
  expression: string;
  /** The result's FHIR type, when it is certain (a define's type is what `%name` has in later expressions). */
  resultType: FhirPathType;
  /** Rule-level `define` names the expression reads (they must be computed first). */
  definesUsed: string[];
  valueSetUrls: string[];
  evaluate(environment: FhirPathEnvironment): unknown[];
}

export class FhirPathCompileError extends Error {
  /** 1-based line and column inside the expression, when the parser said where. */
  readonly line: number | undefined;
  readonly column: number | undefined;
  constructor(message: string, line?: number, column?: number) {
    super(message);
    this.name = 'FhirPathCompileError';
    this.line = line;
    this.column = column;
  }
}

type ResourceWithCode = {
  code?: CodingLike;
  vaccineCode?: CodingLike;
  medicationCodeableConcept?: CodingLike;
};
type CodingLike = { system?: string; code?: string; coding?: CodingLike[] };

function userFunctions(valueSets: ValueSetIndex) {
  return {
    today: {
      fn(this: ClockContext) {
        return cachedInstant(this, 'today', 0, 'day');
      },
      arity: { 0: [] },
      internalStructures: true,
    },
    now: {
      fn(this: ClockContext) {
        return cachedInstant(this, 'now', 0, 'day');
      },
      arity: { 0: [] },
      internalStructures: true,
    },
    /** `now() - 6 months` and the like, folded at compile time: one date per patient, not one per item. */
    [shiftedClockFunction]: {
      fn(this: ClockContext, _input: unknown, base: unknown, amount: unknown, unit: unknown) {
        return cachedInstant(
          this,
          literal(base) as 'now' | 'today',
          Number(literal(amount)),
          literal(unit) as CalendarUnit,
        );
      },
      arity: { 3: ['String', 'Number', 'String'] },
      internalStructures: true,
    },
    /**
     * The input resources whose own code (code, vaccineCode or medicationCodeableConcept) is in the
     * local value set: `%observations.withCode(url)` filters in one native pass what
     * `%observations.where(code.coding.inValueSet(url))` filters item by item in the interpreter.
     */
    withCode: {
      fn(inputs: unknown[], url: unknown[]) {
        const valueSetUrl = String(literal(url));
        // Engine nodes in, the same nodes out: their type information survives the filter.
        return inputs.filter((node) => {
          const resource = (node instanceof fhirpathTypes.ResourceNode ? node.data : node) as
            | ResourceWithCode
            | undefined;
          const code = resource?.code ?? resource?.vaccineCode ?? resource?.medicationCodeableConcept;
          return (
            code !== undefined &&
            codings(code).some((coding) => valueSets.contains(valueSetUrl, coding.system, coding.code))
          );
        });
      },
      arity: { 1: ['String'] },
      internalStructures: true,
    },
    since: {
      fn(this: ClockContext, inputs: unknown[], boundary: unknown[]) {
        const limit = instantOf(boundary?.[0]);
        if (limit === undefined) return [];
        return inputs.filter((node) => {
          // Items are engine nodes, or plain resources when a native function (withCode) made them.
          const when = clinicalInstant(node instanceof fhirpathTypes.ResourceNode ? node.data : node);
          return when !== undefined && when >= limit;
        });
      },
      arity: { 1: ['Any'] },
      internalStructures: true,
    },
    /** The input resource with the latest clinical date (as `since()` reads it); empty when none has one. */
    latest: {
      fn(inputs: unknown[]) {
        let best: unknown;
        let bestInstant = Number.NEGATIVE_INFINITY;
        for (const node of inputs) {
          const when = clinicalInstant(node instanceof fhirpathTypes.ResourceNode ? node.data : node);
          if (when !== undefined && when > bestInstant) {
            best = node;
            bestInstant = when;
          }
        }
        return best === undefined ? [] : [best];
      },
      arity: { 0: [] },
      internalStructures: true,
    },
    /** True when any input Coding or CodeableConcept is in the local value set. */
    inValueSet: {
      fn(inputs: CodingLike[], url: string) {
        return inputs.some((input) =>
          codings(input).some((coding) => valueSets.contains(url, coding.system, coding.code)),
        );
      },
      arity: { 1: ['String'] },
    },
  } as import('fhirpath').UserInvocationTable;
}

const clinicalDateFields = [
  'effectiveDateTime',
  'effectiveInstant',
  'performedDateTime',
  'occurrenceDateTime',
  'authoredOn',
  'onsetDateTime',
  'recordedDate',
  'issued',
  'date',
] as const;
const clinicalPeriodFields = ['effectivePeriod', 'performedPeriod', 'period'] as const;

function clinicalInstant(resource: unknown): number | undefined {
  if (!resource || typeof resource !== 'object') return undefined;
  const record = resource as Record<string, unknown>;
  for (const field of clinicalDateFields) {
    if (typeof record[field] === 'string') return parseInstant(record[field] as string);
  }
  for (const field of clinicalPeriodFields) {
    const period = record[field] as { start?: string; end?: string } | undefined;
    if (period?.start) return parseInstant(period.start);
    if (period?.end) return parseInstant(period.end);
  }
  return undefined;
}

/** A FHIR date or dateTime as epoch ms; partial dates (2025, 2025-06) count from their first day. */
function parseInstant(value: string): number | undefined {
  const padded = /^\d{4}$/.test(value)
    ? `${value}-01-01`
    : /^\d{4}-\d{2}$/.test(value)
      ? `${value}-01`
      : value;
  const parsed = Date.parse(padded);
  return Number.isNaN(parsed) ? undefined : parsed;
}

function instantOf(value: unknown): number | undefined {
  if (value === undefined || value === null) return undefined;
  if (typeof value === 'string') return parseInstant(value);
  if (typeof value === 'object') {
    const object = value as { asStr?: unknown; data?: unknown };
    if (typeof object.asStr === 'string') return parseInstant(object.asStr);
    if ('data' in object) return instantOf(object.data);
  }
  return undefined;
}

/** Literal arguments arrive bare or wrapped in a one-item list, depending on the engine's path. */
function literal(value: unknown): unknown {
  const item = Array.isArray(value) ? value[0] : value;
  return item && typeof item === 'object' && 'data' in item ? (item as { data: unknown }).data : item;
}

type ClockContext = { vars: Record<string, unknown> };
type CalendarUnit = 'year' | 'month' | 'week' | 'day' | 'hour' | 'minute';
const shiftedClockFunction = 'shiftedClock';
const instantCacheVariable = 'instantCache';

/** The evaluation instant (or today), shifted by a calendar amount, built once per environment. */
function cachedInstant(
  context: ClockContext,
  base: 'now' | 'today',
  amount: number,
  unit: CalendarUnit,
): unknown {
  let cache = context.vars[instantCacheVariable] as Map<string, unknown> | undefined;
  if (!cache) {
    cache = new Map();
    context.vars[instantCacheVariable] = cache;
  }
  const key = `${base}|${amount}|${unit}`;
  let value = cache.get(key);
  if (value === undefined) {
    const shifted = shiftDate(clock(context.vars), amount, unit);
    value =
      base === 'today'
        ? new fhirpathTypes.FP_Date(context, fhirpathTypes.FP_Date.isoDate(shifted))
        : new fhirpathTypes.FP_DateTime(context, fhirpathTypes.FP_DateTime.isoDateTime(shifted));
    cache.set(key, value);
  }
  return value;
}

/** Calendar arithmetic as FHIRPath defines it: months and years keep the day, clamped to the month's end. */
function shiftDate(date: Date, amount: number, unit: CalendarUnit): Date {
  if (amount === 0) return date;
  if (unit === 'year' || unit === 'month') {
    const months = unit === 'year' ? amount * 12 : amount;
    const result = new Date(date.getTime());
    const day = result.getUTCDate();
    result.setUTCDate(1);
    result.setUTCMonth(result.getUTCMonth() + months);
    const lastDay = new Date(Date.UTC(result.getUTCFullYear(), result.getUTCMonth() + 1, 0)).getUTCDate();
    result.setUTCDate(Math.min(day, lastDay));
    return result;
  }
  const milliseconds = { week: 604_800_000, day: 86_400_000, hour: 3_600_000, minute: 60_000 }[unit];
  return new Date(date.getTime() + amount * milliseconds);
}

const clockArithmetic =
  /\b(now|today)\(\)\s*([-+])\s*(\d+)\s*'?(years?|months?|weeks?|days?|hours?|minutes?)'?/g;

/** Rewrites `now() - 6 months` into one call whose result is computed once per patient. */
export function foldClockArithmetic(expression: string): string {
  return expression.replace(
    clockArithmetic,
    (_match, base: string, sign: string, amount: string, unit: string) => {
      const singular = unit.replace(/s$/, '');
      return `${shiftedClockFunction}('${base}', ${sign === '-' ? '-' : ''}${amount}, '${singular}')`;
    },
  );
}

function clock(variables: Record<string, unknown>): Date {
  const instant = variables[evaluationInstantVariable];
  return instant instanceof Date ? instant : new Date();
}

function codings(input: CodingLike): CodingLike[] {
  if (!input || typeof input !== 'object') return [];
  return Array.isArray(input.coding) ? input.coding : [input];
}

const valueSetReference = /(?:inValueSet|withCode)\(\s*'((?:[^'\\]|\\.)*)'\s*\)/g;

/**
 * Parses and compiles one expression, checks the value sets it names exist, and runs it once on an
 * empty record so a misspelt function or variable fails at load, not on the first patient.
 */
export function compileFhirPath(
  expression: string,
  valueSets: ValueSetIndex,
  defineNames: readonly string[] = [],
  defineTypes: ReadonlyMap<string, FhirPathType> = new Map(),
): CompiledFhirPath {
  const valueSetUrls = [...expression.matchAll(valueSetReference)].map((match) => match[1]);
  if (/(?:inValueSet|withCode)\(\s*[^'\s)]/.test(expression)) {
    throw new FhirPathCompileError(
      "inValueSet() and withCode() take a value set URL as a quoted literal, e.g. withCode('http://...')",
    );
  }
  for (const url of valueSetUrls) {
    if (!valueSets.has(url)) throw new FhirPathCompileError(`unknown value set ${url}`);
  }
  const variablesUsed = [...expression.matchAll(/%([A-Za-z][A-Za-z0-9_]*)/g)].map((match) => match[1]);
  const definesUsed = [...new Set(variablesUsed.filter((name) => defineNames.includes(name)))];
  const unknownVariable = variablesUsed
    .filter((name) => !defineNames.includes(name))
    .find(
      (name) => !(environmentVariables as readonly string[]).includes(name) && !builtInVariables.has(name),
    );
  if (unknownVariable) {
    throw new FhirPathCompileError(
      `unknown variable %${unknownVariable} (known: ${[...environmentVariables, ...defineNames].map((name) => `%${name}`).join(', ')})`,
    );
  }
  let compiled: (resource: unknown, variables: Record<string, unknown>) => unknown[];
  let ast: unknown;
  try {
    // The author's text is parsed first so that syntax errors point at what they wrote.
    ast = fhirpath.parse(expression);
  } catch (error) {
    throw parseError(error);
  }
  let resultType: FhirPathType;
  try {
    const variables = new Map<string, FhirPathType>(
      Object.entries(variableTypes).map(([name, type]) => [name, [type]]),
    );
    for (const name of defineNames) variables.set(name, defineTypes.get(name));
    resultType = checkPaths(ast, { variables, root: ['Patient'] });
  } catch (error) {
    if (error instanceof FhirPathPathError)
      throw new FhirPathCompileError(error.message, error.line, error.column);
    throw error;
  }
  try {
    compiled = fhirpath.compile(foldClockArithmetic(expression), r4Model, {
      userInvocationTable: userFunctions(valueSets),
    }) as never;
  } catch (error) {
    throw parseError(error);
  }
  const evaluate = (environment: FhirPathEnvironment): unknown[] =>
    compiled(environment.root, environment.variables);
  try {
    const empty = emptyEnvironment();
    for (const name of defineNames) empty.variables[name] = [];
    evaluate(empty);
  } catch (error) {
    throw new FhirPathCompileError(`does not evaluate: ${firstLine(error)}`);
  }
  return { expression, resultType, definesUsed, valueSetUrls, evaluate };
}

type ProbeNode = {
  type: string;
  text?: string;
  start?: { line: number; column: number };
  length?: number;
  children?: ProbeNode[];
};

/**
 * The sub-expressions of an expression that read the record: every chain that starts at a `%variable`
 * (`%procedures.withCode(...)`, `%procedures.withCode(...).since(...)`), longest first. `rules explain`
 * runs them to show the data a criterion saw (the colonoscopy that made "no colonoscopy" false).
 */
export function dataProbes(expression: string): string[] {
  let ast: ProbeNode;
  try {
    ast = fhirpath.parse(expression) as ProbeNode;
  } catch {
    return [];
  }
  const lineStarts = [0];
  for (let index = 0; index < expression.length; index++)
    if (expression[index] === '\n') lineStarts.push(index + 1);
  const offset = (position: { line: number; column: number }) =>
    (lineStarts[position.line - 1] ?? 0) + position.column - 1;
  const probes = new Set<string>();
  const visit = (node: ProbeNode) => {
    const leftmost = leftmostLeaf(node);
    if (
      (node.type === 'InvocationExpression' || node.type === 'ExternalConstantTerm') &&
      leftmost?.type === 'ExternalConstantTerm' &&
      leftmost.start
    ) {
      const end = endOf(node, expression, offset);
      if (end !== undefined) probes.add(expression.slice(offset(leftmost.start), end).trim());
    }
    for (const child of node.children ?? []) visit(child);
  };
  visit(ast);
  return [...probes].sort((left, right) => right.length - left.length);
}

function leftmostLeaf(node: ProbeNode): ProbeNode | undefined {
  if (node.type === 'ExternalConstantTerm') return node;
  const first = node.children?.[0];
  return first ? leftmostLeaf(first) : undefined;
}

/** Where a chain ends in the source: after its last member name, or after its last call's closing parenthesis. */
function endOf(
  node: ProbeNode,
  expression: string,
  offset: (position: { line: number; column: number }) => number,
): number | undefined {
  const last = node.type === 'InvocationExpression' ? node.children?.[1] : node;
  if (!last?.start || last.length === undefined) return undefined;
  // The parser counts a variable's name without its `%`.
  const nameEnd = offset(last.start) + last.length + (last.type === 'ExternalConstantTerm' ? 1 : 0);
  if (last.type !== 'FunctionInvocation') return nameEnd;
  let index = expression.indexOf('(', nameEnd);
  if (index < 0) return undefined;
  let depth = 0;
  for (; index < expression.length; index++) {
    const character = expression[index];
    if (character === "'") {
      // Skip a string literal, escapes included.
      for (index++; index < expression.length && expression[index] !== "'"; index++)
        if (expression[index] === '\\') index++;
    } else if (character === '(') depth++;
    else if (character === ')' && --depth === 0) return index + 1;
  }
  return undefined;
}

const builtInVariables = new Set(['ucum', 'context', 'resource', 'rootResource', 'sct', 'loinc', 'factory']);

function emptyEnvironment(): FhirPathEnvironment {
  const patient = { resourceType: 'Patient', id: 'validation' };
  const variables: Record<string, unknown> = { [evaluationInstantVariable]: new Date() };
  for (const name of environmentVariables) variables[name] = [];
  variables.patient = patient;
  variables.encounter = {
    resourceType: 'Encounter',
    id: 'validation',
    status: 'planned',
    class: { code: 'AMB' },
  };
  return { root: patient, variables };
}

function parseError(error: unknown): FhirPathCompileError {
  const message = firstLine(error);
  const position = /line: (\d+); column: (\d+); message: (.*)/.exec(message);
  if (position) {
    return new FhirPathCompileError(
      `FHIRPath syntax error: ${readableParserMessage(position[3])}`,
      Number(position[1]),
      Number(position[2]) + 1,
    );
  }
  return new FhirPathCompileError(`FHIRPath error: ${shortened(message, 200)}`);
}

/**
 * The parser lists every token it would have accepted (dozens): a few are named, the rest counted, and
 * the input it stumbled on is said in words when it is the end of the expression.
 */
function readableParserMessage(message: string): string {
  const expecting = /^(.*?)expecting \{(.*)\}\s*$/.exec(message);
  let text = message;
  if (expecting) {
    const tokens = expecting[2].split(/,\s*/);
    const shown = tokens.slice(0, 6).join(', ');
    text = `${expecting[1]}expecting ${tokens.length > 6 ? `one of ${shown} or ${tokens.length - 6} more` : shown}`;
  }
  text = text.replace("input '<EOF>'", 'end of expression');
  return shortened(text, 200);
}

/** Cut at a word boundary with an ellipsis, never in the middle of a word. */
function shortened(text: string, limit: number): string {
  if (text.length <= limit) return text;
  const cut = text.slice(0, limit);
  const boundary = cut.search(/\s\S*$/);
  return `${boundary > limit / 2 ? cut.slice(0, boundary) : cut}...`;
}

function firstLine(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0];
}
