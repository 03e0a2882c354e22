import type { ElmLibrary } from './cql-compiler.ts';

/**
 * What a CQL library reads: the data type of every Retrieve in its ELM, through the libraries it
 * includes. The service loads exactly these types for every patient a rule runs on; a type read by
 * CQL but never loaded would come back empty and make the rule silently wrong.
 */
export interface ElmRetrieve {
  /** FHIR resource type (`MedicationStatement`), from the ELM data type `{http://hl7.org/fhir}MedicationStatement`. */
  resourceType: string;
  /** `line:column` of the retrieve in the CQL source, when the translator kept locators. */
  line: number | undefined;
  column: number | undefined;
}

export function elmRetrieves(elm: ElmLibrary): ElmRetrieve[] {
  const found: ElmRetrieve[] = [];
  const visit = (node: unknown) => {
    if (Array.isArray(node)) {
      for (const item of node) visit(item);
      return;
    }
    if (!node || typeof node !== 'object') return;
    const object = node as Record<string, unknown>;
    if (object.type === 'Retrieve' && typeof object.dataType === 'string') {
      const resourceType = object.dataType.replace(/^\{[^}]*\}/, '');
      const position = /^(\d+):(\d+)/.exec(typeof object.locator === 'string' ? object.locator : '');
      found.push({
        resourceType,
        line: position ? Number(position[1]) : undefined,
        column: position ? Number(position[2]) : undefined,
      });
    }
    for (const [key, value] of Object.entries(object)) {
      // Annotations hold the source text as a tree: no retrieves there, and they are most of the bytes.
      if (key !== 'annotation') visit(value);
    }
  };
  visit(elm.library.statements);
  visit(elm.library.parameters);
  return found;
}

/**
 * The loaded library an include names: by name, or by namespace and name as published eCQMs write it
 * (`"path": "http://ecqi.healthit.gov/ecqms/FHIRHelpers"` for a library whose identifier has
 * `system: "http://ecqi.healthit.gov/ecqms"`), which is also how the CQL engine resolves it.
 */
export function includedLibraryName(
  include: { path: string },
  libraries: Map<string, ElmLibrary>,
): string | undefined {
  if (libraries.has(include.path)) return include.path;
  for (const [name, elm] of libraries) {
    const { id, system } = elm.library.identifier;
    if (system && `${system}/${id}` === include.path) return name;
  }
  return undefined;
}

/** The library and every library it includes, directly or not (names as loaded), in a stable order. */
export function libraryClosure(name: string, libraries: Map<string, ElmLibrary>): string[] {
  const seen = new Set<string>();
  const walk = (libraryName: string) => {
    if (seen.has(libraryName) || !libraries.has(libraryName)) return;
    seen.add(libraryName);
    for (const include of libraries.get(libraryName)?.library.includes?.def ?? []) {
      const included = includedLibraryName(include, libraries);
      if (included) walk(included);
    }
  };
  walk(name);
  return [...seen].sort();
}

/** Resource types a library reads, its own and its includes' (by library name as loaded). */
export function libraryDataRequirements(name: string, libraries: Map<string, ElmLibrary>): Set<string> {
  const types = new Set<string>();
  const seen = new Set<string>();
  const walk = (libraryName: string) => {
    if (seen.has(libraryName)) return;
    seen.add(libraryName);
    const elm = libraries.get(libraryName);
    if (!elm) return;
    for (const retrieve of elmRetrieves(elm)) types.add(retrieve.resourceType);
    for (const include of elm.library.includes?.def ?? []) {
      const included = includedLibraryName(include, libraries);
      if (included) walk(included);
    }
  };
  walk(name);
  return types;
}
