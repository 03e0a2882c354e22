import { describe, expect, it } from 'vitest';
import { missingScopes, parseClinicalScope } from '../../fhir/smart-scopes.ts';
import { defaultBackendScopes } from '../../src/config/auth-config.ts';

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
      'system/DocumentReference.cu',
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

  it('requires non-clinical scopes verbatim', () => {
    expect(missingScopes(['openid', 'fhirUser', 'launch'], ['openid', 'launch'])).toEqual(['fhirUser']);
  });
});
