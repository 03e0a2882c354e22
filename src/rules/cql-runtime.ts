import { PatientSource } from 'cql-exec-fhir';
import cql from 'cql-execution';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import type { ElmLibrary } from './cql-compiler.ts';
import { type CqlParameterValues, executionParameters, parameterProblems } from './cql-parameters.ts';
import { canonicalValueSetId, type ValueSetIndex } from './value-sets.ts';

/**
 * Runs ELM libraries with cql-execution over one patient's record (through cql-exec-fhir's R4
 * model). Each library is parsed once when the rule set loads; evaluation builds one bundle per
 * patient and runs every library a rule set uses at most once per patient.
 */
export class CqlRuntime {
  readonly #libraries = new Map<string, InstanceType<typeof cql.Library>>();
  readonly #elm: Map<string, ElmLibrary>;
  readonly #codeService: InstanceType<typeof cql.CodeService>;
  /** Building a patient source parses the FHIR model info (~150 ms): one is reused, one patient at a time. */
  readonly #patientSource = PatientSource.FHIRv401();
  #queue: Promise<unknown> = Promise.resolve();

  constructor(elmLibraries: Map<string, ElmLibrary>, valueSets: ValueSetIndex) {
    this.#elm = elmLibraries;
    const repository = new cql.Repository(Object.fromEntries(elmLibraries));
    for (const [name, elm] of elmLibraries) {
      this.#libraries.set(name, new cql.Library(elm as never, repository));
    }
    this.#codeService = new CanonicalCodeService(valueSets.toCqlDictionary() as never);
  }

  declaresParameter(libraryName: string, name: string): boolean {
    return (this.#elm.get(libraryName)?.library.parameters?.def ?? []).some(
      (definition) => definition.name === name,
    );
  }

  /** What is wrong with the parameter values a rule gives a library (empty: nothing). */
  parameterProblems(libraryName: string, values: CqlParameterValues): string[] {
    const elm = this.#elm.get(libraryName);
    return elm ? parameterProblems(elm, values) : [`CQL library ${libraryName} is not loaded`];
  }

  #located(error: unknown): Error {
    const annotated = error as {
      libraryName?: unknown;
      locator?: unknown;
      cause?: unknown;
      message?: unknown;
    };
    if (typeof annotated?.libraryName !== 'string')
      return error instanceof Error ? error : new Error(String(error));
    // The engine names libraries `Name|version`.
    const library = annotated.libraryName.split('|')[0];
    const range = parseLocator(annotated.locator);
    const statements = (this.#elm.get(library)?.library.statements?.def ?? []) as {
      name: string;
      locator?: string;
    }[];
    const define = range
      ? statements.find((statement) => {
          const span = parseLocator(statement.locator);
          return span !== undefined && before(span.start, range.start) && before(range.end, span.end);
        })?.name
      : undefined;
    const cause = annotated.cause instanceof Error ? annotated.cause.message : String(annotated.cause ?? '');
    return new CqlEvaluationError(library, define, range?.start, cause.trim() || 'error', { cause: error });
  }

  has(libraryName: string): boolean {
    return this.#libraries.has(libraryName);
  }

  /**
   * Define name -> value for the patient, per library: its Patient-context defines, and its Unfiltered
   * ones (over this one patient's data, as the engine runs them).
   */
  async evaluate(
    libraryName: string,
    record: PatientRecord,
    now: Date,
    parameters: CqlParameterValues = {},
  ): Promise<Record<string, unknown>> {
    const library = this.#libraries.get(libraryName);
    const elm = this.#elm.get(libraryName);
    if (!library || !elm) throw new Error(`CQL library ${libraryName} is not loaded`);
    const run = async () => {
      this.#patientSource.reset();
      this.#patientSource.loadBundles([recordBundle(record)]);
      const executor = new cql.Executor(
        library,
        this.#codeService,
        executionParameters(elm, parameters, now) as never,
      );
      const results = await executor
        .exec(this.#patientSource as never, cql.DateTime.fromJSDate(now, 0))
        .catch((error: unknown) => {
          throw this.#located(error);
        })
        .finally(() => this.#patientSource.reset());
      const patientId = record.patient.id ?? '';
      return {
        ...((results.unfilteredResults ?? {}) as Record<string, unknown>),
        ...((results.patientResults[patientId] ?? {}) as Record<string, unknown>),
      };
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }
}

/**
 * The engine's own error with where it happened: cql-execution reports the failing ELM node (its class,
 * library and source locator) behind a generic first line; the define is the statement whose source
 * range holds that locator.
 */
export class CqlEvaluationError extends Error {
  readonly library: string;
  readonly define: string | undefined;
  readonly line: number | undefined;
  readonly column: number | undefined;

  constructor(
    library: string,
    define: string | undefined,
    position: Position | undefined,
    engineMessage: string,
    options?: { cause?: unknown },
  ) {
    super(
      `CQL ${library}${define ? ` "${define}"` : ''}${position ? ` at line ${position.line}:${position.column}` : ''}: ${engineMessage}`,
      options,
    );
    this.name = 'CqlEvaluationError';
    this.library = library;
    this.define = define;
    this.line = position?.line;
    this.column = position?.column;
  }
}

type Position = { line: number; column: number };

function parseLocator(locator: unknown): { start: Position; end: Position } | undefined {
  const match = /^(\d+):(\d+)-(\d+):(\d+)$/.exec(typeof locator === 'string' ? locator : '');
  if (!match) return undefined;
  const [line, column, endLine, endColumn] = match.slice(1).map(Number);
  return { start: { line, column }, end: { line: endLine, column: endColumn } };
}

function before(left: Position, right: Position): boolean {
  return left.line < right.line || (left.line === right.line && left.column <= right.column);
}

/**
 * Value sets looked up whatever form a library names them in: `urn:oid:2.16...`, the bare OID and
 * VSAC's `http(s)://cts.nlm.nih.gov/fhir/ValueSet/2.16...` are one value set. A version the file does
 * not have falls back to the one it has (the site ships one expansion per value set).
 */
class CanonicalCodeService extends cql.CodeService {
  override findValueSetsByOid(oid: string) {
    return super.findValueSetsByOid(canonicalValueSetId(oid));
  }

  override findValueSet(oid: string, version?: string) {
    const id = canonicalValueSetId(oid);
    return (version ? super.findValueSet(id, version) : undefined) ?? super.findValueSet(id);
  }
}

function recordBundle(record: PatientRecord): Bundle {
  return {
    resourceType: 'Bundle',
    type: 'collection',
    entry: recordResources(record).map((resource: FhirResource) => ({ resource })),
  };
}
