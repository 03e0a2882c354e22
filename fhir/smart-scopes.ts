/**
 * SMART clinical scopes, v2 (`system/Observation.rs`, `patient/*.cruds?category=...`) and v1
 * (`system/Observation.read`, `.write`, `.*`), so that the grant a server returns can be checked against
 * what the service needs. A server may answer with either syntax whatever was asked.
 */
export type ScopeContext = 'patient' | 'user' | 'system';
export type Permission = 'c' | 'r' | 'u' | 'd' | 's';

export interface ClinicalScope {
  context: ScopeContext;
  /** A resource type or `*`. */
  resourceType: string;
  permissions: ReadonlySet<Permission>;
  /** v2 query restriction (`?category=...`): the scope then covers only part of the resource type. */
  query: string | undefined;
}

const permissionOrder: Permission[] = ['c', 'r', 'u', 'd', 's'];
const v1Permissions: Record<string, Permission[]> = {
  read: ['r', 's'],
  write: ['c', 'u', 'd'],
  '*': ['c', 'r', 'u', 'd', 's'],
};

const clinicalScopePattern = /^(patient|user|system)\/([A-Za-z]+|\*)\.([a-z*]+)(?:\?(.+))?$/;

/** Parses a clinical scope; undefined for anything else (openid, launch, fhirUser, malformed text). */
export function parseClinicalScope(scope: string): ClinicalScope | undefined {
  const match = clinicalScopePattern.exec(scope);
  if (!match) return undefined;
  const [, context, resourceType, permissionText, query] = match;
  let permissions: Permission[] | undefined = v1Permissions[permissionText];
  if (!permissions) {
    // v2 letters must appear in the order c r u d s, each at most once ("rs" yes, "sr" no).
    let position = 0;
    permissions = [];
    for (const letter of permissionText) {
      const index = permissionOrder.indexOf(letter as Permission, position);
      if (index < 0) return undefined;
      permissions.push(letter as Permission);
      position = index + 1;
    }
  }
  return {
    context: context as ScopeContext,
    resourceType,
    permissions: new Set(permissions),
    query,
  };
}

/**
 * The requested scopes the grant does not cover. A clinical scope is covered when the granted scopes for the
 * same context and resource type (or `*`), unrestricted or with the same query, together hold every permission
 * letter asked for. Other scopes (openid, launch/patient, fhirUser) must be granted verbatim.
 */
export function missingScopes(requested: readonly string[], granted: readonly string[]): string[] {
  const grantedClinical = granted
    .map(parseClinicalScope)
    .filter((scope): scope is ClinicalScope => scope !== undefined);
  const grantedOther = new Set(granted);
  return requested.filter((scope) => {
    const wanted = parseClinicalScope(scope);
    if (!wanted) return !grantedOther.has(scope);
    const held = new Set<Permission>();
    for (const candidate of grantedClinical) {
      if (candidate.context !== wanted.context) continue;
      if (candidate.resourceType !== '*' && candidate.resourceType !== wanted.resourceType) continue;
      if (candidate.query !== undefined && candidate.query !== wanted.query) continue;
      for (const permission of candidate.permissions) held.add(permission);
    }
    return [...wanted.permissions].some((permission) => !held.has(permission));
  });
}
