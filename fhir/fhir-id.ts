/**
 * What may name a resource: FHIR's id pattern, minus ids made only of dots. `..` matches the pattern, but in a
 * URL it is a path segment that climbs out of the resource (`Patient/..` is the server's base), so nothing from
 * outside may name one. The one test every part uses, in intake, the FHIR client, the patient guard and HTTP.
 */
const fhirIdPattern = /^[A-Za-z0-9\-.]{1,64}$/;

export function isFhirId(value: unknown): value is string {
  return typeof value === 'string' && fhirIdPattern.test(value) && !/^\.+$/.test(value);
}
