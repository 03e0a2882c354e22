import { PatientSource } from 'cql-exec-fhir';
import cql from 'cql-execution';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import type { ElmLibrary } from './cql-compiler.ts';
import type { ValueSetIndex } from './value-sets.ts';

/**
 * Runs ELM libraries with cql-execution over one patient's record (through cql-exec-fhir's R4
 * model). Each library is parsed once when the rule set loads; evaluation builds one bundle per
 * patient and runs every library a rule set uses at most once per patient.
 */
export class CqlRuntime {
  readonly #libraries = new Map<string, InstanceType<typeof cql.Library>>();
  readonly #codeService: InstanceType<typeof cql.CodeService>;
  /** Building a patient source parses the FHIR model info (~150 ms): one is reused, one patient at a time. */
  readonly #patientSource = PatientSource.FHIRv401();
  #queue: Promise<unknown> = Promise.resolve();

  constructor(elmLibraries: Map<string, ElmLibrary>, valueSets: ValueSetIndex) {
    const repository = new cql.Repository(Object.fromEntries(elmLibraries));
    for (const [name, elm] of elmLibraries) {
      this.#libraries.set(name, new cql.Library(elm as never, repository));
    }
    this.#codeService = new cql.CodeService(valueSets.toCqlDictionary() as never);
  }

  has(libraryName: string): boolean {
    return this.#libraries.has(libraryName);
  }

  /** Define name -> value for the patient, per library. */
  async evaluate(libraryName: string, record: PatientRecord, now: Date): Promise<Record<string, unknown>> {
    const library = this.#libraries.get(libraryName);
    if (!library) throw new Error(`CQL library ${libraryName} is not loaded`);
    const run = async () => {
      this.#patientSource.reset();
      this.#patientSource.loadBundles([recordBundle(record)]);
      const executor = new cql.Executor(library, this.#codeService);
      const results = await executor.exec(this.#patientSource as never, cql.DateTime.fromJSDate(now, 0));
      this.#patientSource.reset();
      const patientId = record.patient.id ?? '';
      return (results.patientResults[patientId] ?? {}) as Record<string, unknown>;
    };
    const result = this.#queue.then(run, run);
    this.#queue = result.catch(() => undefined);
    return result;
  }
}

function recordBundle(record: PatientRecord): Bundle {
  return {
    resourceType: 'Bundle',
    type: 'collection',
    entry: recordResources(record).map((resource: FhirResource) => ({ resource })),
  };
}
