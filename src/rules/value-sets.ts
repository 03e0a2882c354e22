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
