import cql from 'cql-execution';
import type { ElmLibrary } from './cql-compiler.ts';

/**
 * CQL parameters as rule files give them (YAML scalars and maps) turned into the engine's values, by
 * the type the library declares. "Measurement Period" is the parameter every eCQM has: without a value
 * it is the calendar year of the evaluation date, which is what a nudge evaluated today asks about
 * (a library's own default is usually a past reporting year). Loaded only for rule sets with CQL.
 */
export type CqlParameterValues = Record<string, unknown>;

type ParameterKind =
  | 'interval-datetime'
  | 'interval-date'
  | 'datetime'
  | 'date'
  | 'integer'
  | 'decimal'
  | 'boolean'
  | 'string';

type ParameterDefinition = ElmParameter & { kind: ParameterKind | undefined };
type ElmParameter = {
  name: string;
  default?: unknown;
  parameterTypeSpecifier?: TypeSpecifier;
  resultTypeSpecifier?: TypeSpecifier;
  resultTypeName?: string;
};
type TypeSpecifier = { type?: string; name?: string; pointType?: TypeSpecifier };

export const measurementPeriod = 'Measurement Period';

function kindOf(specifier: TypeSpecifier | undefined, typeName?: string): ParameterKind | undefined {
  const simple = (name: string | undefined): ParameterKind | undefined => {
    const bare = name?.replace(/^\{[^}]*\}/, '');
    switch (bare) {
      case 'DateTime':
        return 'datetime';
      case 'Date':
        return 'date';
      case 'Integer':
        return 'integer';
      case 'Decimal':
        return 'decimal';
      case 'Boolean':
        return 'boolean';
      case 'String':
        return 'string';
      default:
        return undefined;
    }
  };
  if (specifier?.type === 'IntervalTypeSpecifier') {
    const point = simple(specifier.pointType?.name);
    if (point === 'datetime') return 'interval-datetime';
    if (point === 'date') return 'interval-date';
    return undefined;
  }
  if (specifier?.type === 'NamedTypeSpecifier') return simple(specifier.name);
  return simple(typeName);
}

export function parameterDefinitions(elm: ElmLibrary): ParameterDefinition[] {
  return ((elm.library.parameters?.def ?? []) as ElmParameter[]).map((definition) => ({
    ...definition,
    kind:
      kindOf(definition.parameterTypeSpecifier) ??
      kindOf(definition.resultTypeSpecifier, definition.resultTypeName) ??
      defaultKind(definition.default),
  }));
}

/** A typeless parameter with a default (older ELM): its type from the default's shape. */
function defaultKind(value: unknown): ParameterKind | undefined {
  const node = value as { type?: string; low?: { type?: string }; valueType?: string } | undefined;
  if (node?.type === 'Interval')
    return node.low?.type === 'DateTime'
      ? 'interval-datetime'
      : node.low?.type === 'Date'
        ? 'interval-date'
        : undefined;
  if (node?.type === 'DateTime') return 'datetime';
  if (node?.type === 'Date') return 'date';
  if (node?.type === 'Literal') return kindOf(undefined, node.valueType);
  return undefined;
}

const year = /^\d{4}$/;
const dateOnly = /^\d{4}(-\d{2}(-\d{2})?)?$/;

function dateTime(text: string, end: boolean): InstanceType<typeof cql.DateTime> {
  // A date alone stands for its whole day (or month, or year): the start of it, or its last millisecond.
  if (dateOnly.test(text)) {
    const [y, m, d] = text.split('-').map(Number);
    const startOfPeriod = Date.UTC(y, (m ?? 1) - 1, d ?? 1);
    const endOfPeriod = d ? Date.UTC(y, m - 1, d + 1) : m ? Date.UTC(y, m, 1) : Date.UTC(y + 1, 0, 1);
    return cql.DateTime.fromJSDate(new Date(end ? endOfPeriod - 1 : startOfPeriod), 0);
  }
  const parsed = cql.DateTime.parse(text);
  if (!parsed) throw new Error(`"${text}" is not a date-time (like 2021-01-01T00:00:00Z)`);
  return parsed;
}

function date(text: string): InstanceType<typeof cql.Date> {
  const parsed = /^\d{4}-\d{2}-\d{2}$/.test(text) ? cql.Date.parse(text) : null;
  if (!parsed) throw new Error(`"${text}" is not a date (like 2021-01-01)`);
  return parsed;
}

/** `2021` (a year), `2021-01-01/2021-12-31`, or `{ start, end }`: both ends included. */
function intervalEnds(value: unknown): [string, string] {
  if (typeof value === 'number' && Number.isInteger(value)) return [String(value), String(value)];
  if (typeof value === 'string') {
    if (year.test(value)) return [value, value];
    const [start, end, ...rest] = value.split('/');
    if (start && end && rest.length === 0) return [start.trim(), end.trim()];
  }
  if (value && typeof value === 'object' && !Array.isArray(value)) {
    const { start, end, ...rest } = value as Record<string, unknown>;
    if (Object.keys(rest).length > 0)
      throw new Error(`unknown field ${Object.keys(rest)[0]} (an interval has start and end)`);
    if (typeof start === 'string' && typeof end === 'string') return [start, end];
  }
  throw new Error('an interval is a year (2021), "start/end", or { start, end }');
}

export function parameterValue(definition: ParameterDefinition, value: unknown): unknown {
  switch (definition.kind) {
    case 'interval-datetime': {
      const [start, end] = intervalEnds(value);
      return new cql.Interval(dateTime(start, false), dateTime(end, true), true, true);
    }
    case 'interval-date': {
      const [start, end] = intervalEnds(value);
      const first = year.test(start) ? `${start}-01-01` : start;
      const last = year.test(end) ? `${end}-12-31` : end;
      return new cql.Interval(date(first), date(last), true, true);
    }
    case 'datetime':
      if (typeof value !== 'string') throw new Error('a date-time is a string');
      return dateTime(value, false);
    case 'date':
      if (typeof value !== 'string') throw new Error('a date is a string');
      return date(value);
    case 'integer':
      if (!Number.isInteger(value)) throw new Error('an integer is expected');
      return value;
    case 'decimal':
      if (typeof value !== 'number' || !Number.isFinite(value)) throw new Error('a number is expected');
      return value;
    case 'boolean':
      if (typeof value !== 'boolean') throw new Error('true or false is expected');
      return value;
    case 'string':
      if (typeof value !== 'string') throw new Error('a string is expected');
      return value;
    default:
      throw new Error(
        'its type cannot be given in a rule file (only dates, date-times, their intervals, numbers, booleans and strings)',
      );
  }
}

/** What is wrong with the values a rule gives a library's parameters (empty: nothing). */
export function parameterProblems(elm: ElmLibrary, values: CqlParameterValues): string[] {
  const definitions = parameterDefinitions(elm);
  const problems: string[] = [];
  for (const [name, value] of Object.entries(values)) {
    const definition = definitions.find((candidate) => candidate.name === name);
    if (!definition) {
      problems.push(
        `library ${elm.library.identifier.id} has no parameter "${name}" (it has ${definitions.map((candidate) => `"${candidate.name}"`).join(', ') || 'none'})`,
      );
      continue;
    }
    try {
      parameterValue(definition, value);
    } catch (error) {
      problems.push(`parameter "${name}": ${error instanceof Error ? error.message : String(error)}`);
    }
  }
  return problems;
}

/**
 * The engine's parameter values for one evaluation: what the rule (or a backtest) gives, converted;
 * an unset Measurement Period is the evaluation date's calendar year; other parameters keep the
 * library's defaults. Values for parameters the library does not declare are left out.
 */
export function executionParameters(
  elm: ElmLibrary,
  values: CqlParameterValues,
  now: Date,
): Record<string, unknown> {
  const parameters: Record<string, unknown> = {};
  for (const definition of parameterDefinitions(elm)) {
    if (definition.name in values) {
      parameters[definition.name] = parameterValue(definition, values[definition.name]);
    } else if (
      definition.name === measurementPeriod &&
      (definition.kind === 'interval-datetime' || definition.kind === 'interval-date')
    ) {
      parameters[definition.name] = parameterValue(definition, now.getUTCFullYear());
    }
  }
  return parameters;
}
