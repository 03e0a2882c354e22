import { describe, expect, it } from 'vitest';
import { authConfigSchema, defaultBackendScopes, defaultLaunchScopes } from '../../src/config/auth-config.ts';

describe('auth configuration', () => {
  it('defaults to no backend auth and no launch', () => {
    expect(authConfigSchema.parse(undefined)).toEqual({ backend: { mode: 'none' } });
  });

  it('fills smart-backend defaults from environment-style strings', () => {
    const config = authConfigSchema.parse({
      backend: { mode: 'smart-backend', clientId: 'svc', assertionLifetimeSeconds: '120' },
    });
    expect(config.backend).toEqual({
      mode: 'smart-backend',
      clientId: 'svc',
      alg: 'ES384',
      scopes: defaultBackendScopes.split(' '),
      assertionLifetimeSeconds: 120,
      requestTimeoutMs: 10_000,
      publishedKeyFiles: [],
    });
  });

  it('refuses an assertion lifetime above five minutes, an unknown alg and unknown keys', () => {
    const parse = (backend: Record<string, unknown>) =>
      authConfigSchema.safeParse({ backend: { mode: 'smart-backend', clientId: 'svc', ...backend } }).success;
    expect(parse({ assertionLifetimeSeconds: 301 })).toBe(false);
    expect(parse({ alg: 'HS256' })).toBe(false);
    expect(parse({ clientSecret: 'x' })).toBe(false);
    expect(parse({ scopes: 'system/Patient.rs system/Encounter.rs' })).toBe(true);
  });

  it('fills launch defaults', () => {
    const config = authConfigSchema.parse({
      launch: { clientId: 'app', allowedIssuers: ['https://ehr.example/fhir'] },
    });
    expect(config.launch).toMatchObject({
      clientId: 'app',
      scopes: defaultLaunchScopes.split(' '),
      reviewPath: '/review',
      clientAuthentication: 'public',
      sessionTtlSeconds: 28_800,
      sessionStore: 'memory',
      discoveryCacheSeconds: 300,
      cookie: { secure: true, sameSite: 'none', partitioned: true },
    });
    expect(authConfigSchema.safeParse({ launch: { clientId: 'app', allowedIssuers: [] } }).success).toBe(
      false,
    );
  });
});
