import { describe, expect, it } from 'vitest';
import { missingScopes, parseClinicalScope } from '../../fhir/smart-scopes.ts';
import { defaultBackendScopes, defaultLaunchScopes } from '../../src/config/auth-config.ts';

const needed = defaultBackendScopes.split(' ');

describe('SMART scopes', () => {
  it('parses v2 permissions in c r u d s order and rejects other orders', () => {
    expect([...(parseClinicalScope('system/Subscription.cru')?.permissions ?? [])]).toEqual(['c', 'r', 'u']);
    expect(parseClinicalScope('system/Observation.rs?category=laboratory')?.query).toBe(
      'category=laboratory',
    );
    expect(parseClinicalScope('system/Observation.sr')).toBeUndefined();
    expect(parseClinicalScope('system/Observation.rr')).toBeUndefined();
    expect(parseClinicalScope('openid')).toBeUndefined();
  });

  it('accepts every default backend scope as valid v2 syntax', () => {
    for (const scope of needed) expect(parseClinicalScope(scope), scope).toBeDefined();
  });

  it('treats v1 read/write/* grants as covering the v2 letters', () => {
    expect(missingScopes(needed, ['system/*.read', 'system/*.write'])).toEqual([]);
    expect(missingScopes(needed, ['system/*.*'])).toEqual([]);
    expect(missingScopes(['system/Patient.rs'], ['system/Patient.read'])).toEqual([]);
    expect(missingScopes(needed, ['system/*.read'])).toEqual([
      'system/DocumentReference.crus',
      'system/Provenance.cs',
      'system/Device.cs',
      'system/Subscription.crus',
    ]);
  });

  it('combines several grants for one type, but not across contexts or narrower queries', () => {
    expect(
      missingScopes(['system/Subscription.cru'], ['system/Subscription.c', 'system/Subscription.ru']),
    ).toEqual([]);
    expect(missingScopes(['system/Patient.rs'], ['patient/Patient.rs', 'user/Patient.rs'])).toEqual([
      'system/Patient.rs',
    ]);
    expect(missingScopes(['system/Observation.rs'], ['system/Observation.rs?category=vital-signs'])).toEqual([
      'system/Observation.rs',
    ]);
    expect(missingScopes(['system/Encounter.rs'], ['system/Encounter.r'])).toEqual(['system/Encounter.rs']);
  });

  it('asks for each resource type once in both default lists, with every permission in that one scope', () => {
    // Medplum under an access policy applies only the first scope it sees for a type: a split pair
    // (`.rs` then `.cu`) loses its writes.
    for (const [name, list] of [
      ['backend', defaultBackendScopes],
      ['launch', defaultLaunchScopes],
    ] as const) {
      const types = list
        .split(' ')
        .map(parseClinicalScope)
        .filter((scope) => scope !== undefined)
        .map((scope) => `${scope.context}/${scope.resourceType}`);
      expect(types.length, name).toBeGreaterThan(0);
      expect(
        types.filter((type, index) => types.indexOf(type) !== index),
        name,
      ).toEqual([]);
    }
    expect(defaultBackendScopes.split(' ')).toContain('system/DocumentReference.crus');
    expect(defaultLaunchScopes.split(' ')).toContain('patient/DocumentReference.crus');
  });

  it('checks a merged scope against a grant in either form, naming it when a permission is missing', () => {
    expect(missingScopes(['system/DocumentReference.crus'], ['system/DocumentReference.crus'])).toEqual([]);
    expect(
      missingScopes(
        ['system/DocumentReference.crus'],
        ['system/DocumentReference.rs', 'system/DocumentReference.cu'],
      ),
    ).toEqual([]);
    expect(missingScopes(['system/DocumentReference.crus'], ['system/DocumentReference.cruds'])).toEqual([]);
    expect(
      missingScopes(
        ['system/DocumentReference.crus'],
        ['system/DocumentReference.read', 'system/DocumentReference.write'],
      ),
    ).toEqual([]);
    // What Medplum effectively granted before: the first scope for the type only.
    expect(
      missingScopes(needed, [
        ...needed.filter((scope) => !scope.startsWith('system/DocumentReference.')),
        'system/DocumentReference.rs',
      ]),
    ).toEqual(['system/DocumentReference.crus']);
  });

  it('requires non-clinical scopes verbatim', () => {
    expect(missingScopes(['openid', 'fhirUser', 'launch'], ['openid', 'launch'])).toEqual(['fhirUser']);
  });
});
