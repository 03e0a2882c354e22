/**
 * A CQL result as a list of plain values: FHIR objects become their JSON (so they can be cited as
 * evidence), lists are flattened, null is empty. Kept apart from the CQL engine so that evaluating
 * FHIRPath-only rule sets never loads it.
 */
export function cqlResultValues(value: unknown): unknown[] {
  if (value === null || value === undefined) return [];
  if (Array.isArray(value)) return value.flatMap((item) => cqlResultValues(item));
  if (typeof value === 'object' && '_json' in value) return [(value as { _json: unknown })._json];
  return [value];
}
