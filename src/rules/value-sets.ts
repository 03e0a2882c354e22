import { z } from 'zod';

/**
 * The site's local value sets: what FHIRPath `inValueSet()` and CQL `valueset` declarations resolve
 * against, so rules never need a terminology server at run time.
 */
const codeSchema = z
  .object({ system: z.string().min(1), code: z.string().min(1), display: z.string().optional() })
  .strict();

export const valueSetFileSchema = z
  .object({
    valueSets: z.array(
      z
        .object({
          url: z.string().min(1),
          version: z.string().min(1).optional(),
          name: z.string().min(1),
          codes: z.array(codeSchema).min(1),
        })
        .strict(),
    ),
  })
  .strict();

export type ValueSetFile = z.infer<typeof valueSetFileSchema>;

/** cql-execution's CodeService input: url -> version -> codes. */
export type CqlValueSetDictionary = Record<
  string,
  Record<string, { code: string; system: string; version?: string }[]>
>;

export class ValueSetIndex {
  readonly #membersByUrl = new Map<string, Set<string>>();
  readonly #file: ValueSetFile;

  constructor(file: ValueSetFile) {
    this.#file = file;
    for (const valueSet of file.valueSets) {
      const members = this.#membersByUrl.get(valueSet.url) ?? new Set<string>();
      for (const code of valueSet.codes) members.add(memberKey(code.system, code.code));
      this.#membersByUrl.set(valueSet.url, members);
    }
  }

  has(url: string): boolean {
    return this.#membersByUrl.has(url);
  }

  get urls(): string[] {
    return [...this.#membersByUrl.keys()];
  }

  contains(url: string, system: string | undefined, code: string | undefined): boolean {
    if (!system || !code) return false;
    return this.#membersByUrl.get(url)?.has(memberKey(system, code)) ?? false;
  }

  toCqlDictionary(): CqlValueSetDictionary {
    const dictionary: CqlValueSetDictionary = {};
    for (const valueSet of this.#file.valueSets) {
      const versions = dictionary[valueSet.url] ?? {};
      versions[valueSet.version ?? ''] = valueSet.codes.map((code) => ({
        code: code.code,
        system: code.system,
      }));
      dictionary[valueSet.url] = versions;
    }
    return dictionary;
  }
}

function memberKey(system: string, code: string): string {
  return `${system}|${code}`;
}

export const emptyValueSetIndex = new ValueSetIndex({ valueSets: [] });

type FhirValueSet = {
  resourceType: 'ValueSet';
  url?: string;
  version?: string;
  name?: string;
  title?: string;
  expansion?: { contains?: ExpansionEntry[] };
  compose?: {
    include?: {
      system?: string;
      concept?: { code: string; display?: string }[];
      filter?: unknown[];
      valueSet?: string[];
    }[];
  };
};
type ExpansionEntry = { system?: string; code?: string; display?: string; contains?: ExpansionEntry[] };

/**
 * FHIR ValueSet resources (one, or a Bundle of them, as VSAC and terminology servers export them)
 * as the local value-set file. Only what can be read without a terminology server is accepted: an
 * expansion, or a compose that lists its concepts.
 */
export function valueSetFileFromFhir(json: unknown): { file?: ValueSetFile; errors: string[] } {
  const resource = json as { resourceType?: string; entry?: { resource?: unknown }[] };
  const valueSets = (
    resource.resourceType === 'Bundle' ? (resource.entry ?? []).map((entry) => entry.resource) : [resource]
  ) as FhirValueSet[];
  const errors: string[] = [];
  const file: ValueSetFile = { valueSets: [] };
  valueSets.forEach((valueSet, index) => {
    if (valueSet?.resourceType !== 'ValueSet' || !valueSet.url) {
      errors.push(`entry ${index}: not a ValueSet with a url`);
      return;
    }
    const codes: ValueSetFile['valueSets'][number]['codes'] = [];
    const walk = (entries: ExpansionEntry[] | undefined) => {
      for (const entry of entries ?? []) {
        if (entry.system && entry.code)
          codes.push({ system: entry.system, code: entry.code, display: entry.display });
        walk(entry.contains);
      }
    };
    walk(valueSet.expansion?.contains);
    if (codes.length === 0) {
      for (const include of valueSet.compose?.include ?? []) {
        if (include.filter?.length || include.valueSet?.length || !include.system) {
          errors.push(
            `${valueSet.url}: compose uses filters or other value sets; ship its expansion instead`,
          );
          return;
        }
        for (const concept of include.concept ?? [])
          codes.push({ system: include.system, code: concept.code, display: concept.display });
      }
    }
    if (codes.length === 0) {
      errors.push(`${valueSet.url}: no codes (neither an expansion nor listed concepts)`);
      return;
    }
    file.valueSets.push({
      url: valueSet.url,
      version: valueSet.version,
      name: valueSet.name ?? valueSet.title ?? valueSet.url,
      codes,
    });
  });
  return errors.length > 0 ? { errors } : { file, errors };
}
