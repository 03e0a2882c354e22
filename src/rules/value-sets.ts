import { z } from 'zod';

/**
 * The site's local value sets: what FHIRPath `inValueSet()` and CQL `valueset` declarations resolve
 * against, so rules never need a terminology server at run time.
 */
const codeSchema = z
  .object({
    system: z.string().min(1),
    code: z.string().min(1),
    display: z.string().optional(),
    version: z.string().optional(),
  })
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

const oid = /^[0-2](\.(0|[1-9]\d*))+$/;
const vsacValueSet = /^https?:\/\/cts\.nlm\.nih\.gov\/fhir\/ValueSet\/([0-9.]+)$/;

/**
 * One key for one value set, whatever form names it: VSAC value sets are published as
 * `http://cts.nlm.nih.gov/fhir/ValueSet/<oid>` (or https), `urn:oid:<oid>` and the bare OID.
 */
export function canonicalValueSetId(id: string): string {
  const vsac = vsacValueSet.exec(id)?.[1];
  if (vsac && oid.test(vsac)) return vsac;
  if (id.startsWith('urn:oid:') && oid.test(id.slice(8))) return id.slice(8);
  return id;
}

export class ValueSetIndex {
  readonly #membersByUrl = new Map<string, Set<string>>();
  readonly #file: ValueSetFile;

  constructor(file: ValueSetFile) {
    this.#file = file;
    for (const valueSet of file.valueSets) {
      const key = canonicalValueSetId(valueSet.url);
      const members = this.#membersByUrl.get(key) ?? new Set<string>();
      for (const code of valueSet.codes) members.add(memberKey(code.system, code.code));
      this.#membersByUrl.set(key, members);
    }
  }

  has(url: string): boolean {
    return this.#membersByUrl.has(canonicalValueSetId(url));
  }

  get urls(): string[] {
    return [...new Set(this.#file.valueSets.map((valueSet) => valueSet.url))];
  }

  contains(url: string, system: string | undefined, code: string | undefined): boolean {
    if (!system || !code) return false;
    return this.#membersByUrl.get(canonicalValueSetId(url))?.has(memberKey(system, code)) ?? false;
  }

  /** Keyed by canonical id (see canonicalValueSetId): look-ups must canonicalise too. */
  /** `system|code` of every member, sorted: what a rule's logic depends on. */
  membersOf(url: string): string[] {
    return [...(this.#membersByUrl.get(canonicalValueSetId(url)) ?? [])].sort();
  }

  toCqlDictionary(): CqlValueSetDictionary {
    const dictionary: CqlValueSetDictionary = {};
    for (const valueSet of this.#file.valueSets) {
      const key = canonicalValueSetId(valueSet.url);
      const versions = dictionary[key] ?? {};
      versions[valueSet.version ?? ''] = valueSet.codes.map((code) => ({
        code: code.code,
        system: code.system,
        ...(code.version ? { version: code.version } : {}),
      }));
      dictionary[key] = versions;
    }
    return dictionary;
  }
}

function memberKey(system: string, code: string): string {
  return `${system}|${code}`;
}

/**
 * CDS Connect's `valueset-db.json` (cql-execution's code-service format, as cql-exec-vsac caches it):
 * `{ "<oid>": { "<version>": [{ code, system, version? }] } }`. Undefined when the JSON is not that shape.
 */
export function valueSetFileFromCodeServiceJson(
  json: unknown,
): { file?: ValueSetFile; errors: string[] } | undefined {
  if (!json || typeof json !== 'object' || Array.isArray(json)) return undefined;
  const entries = Object.entries(json as Record<string, unknown>);
  const isShape = entries.every(
    ([, versions]) =>
      versions !== null &&
      typeof versions === 'object' &&
      !Array.isArray(versions) &&
      Object.values(versions).every((codes) => Array.isArray(codes)),
  );
  if (entries.length === 0 || !isShape) return undefined;
  const errors: string[] = [];
  const file: ValueSetFile = { valueSets: [] };
  for (const [id, versions] of entries) {
    for (const [version, codes] of Object.entries(versions as Record<string, unknown[]>)) {
      const valid = codes.filter(
        (code): code is { code: string; system: string; version?: string } =>
          typeof (code as { code?: unknown })?.code === 'string' &&
          typeof (code as { system?: unknown })?.system === 'string',
      );
      if (valid.length !== codes.length) {
        errors.push(`${id} version ${version}: every code needs a code and a system`);
        continue;
      }
      if (valid.length === 0) continue;
      file.valueSets.push({
        url: id,
        name: id,
        ...(version ? { version } : {}),
        codes: valid.map((code) => ({
          system: code.system,
          code: code.code,
          ...(typeof code.version === 'string' ? { version: code.version } : {}),
        })),
      });
    }
  }
  return errors.length > 0 ? { errors } : { file, errors };
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
