import { mkdtemp, readFile, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { generateKeyPair, SignJWT } from 'jose';
import { afterAll, afterEach, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { generatedKeyPath, loadSigningKey } from '../../fhir/signing-keys.ts';
import { type AccessTokenProvider, createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import type { FetchFunction } from '../../fhir/smart-discovery.ts';
import { backendAuthConfigSchema, defaultBackendScopes } from '../../src/config/auth-config.ts';
import { createSmartLaunch } from '../../src/http/smart-launch.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

const clientId = 'ehr-draft-agent';
const allScopes = defaultBackendScopes.split(' ');

let authorizationServer: SmartAuthorizationServer;
let dataDir: string;

beforeAll(async () => {
  authorizationServer = await startSmartAuthorizationServer();
});
afterAll(async () => {
  await authorizationServer.close();
});
beforeEach(async () => {
  dataDir = await mkdtemp(path.join(tmpdir(), 'smart-backend-'));
  authorizationServer.tokenRequests.length = 0;
  Object.assign(authorizationServer.misbehave, {
    grantedScopeOverride: undefined,
    accessTokenLifetimeSeconds: 300,
  });
});
afterEach(async () => {
  await rm(dataDir, { recursive: true, force: true });
});

/** A provider whose public key is registered inline with the authorization server. */
async function registeredProvider(
  overrides: Record<string, unknown> = {},
  options: { now?: () => number; fetch?: FetchFunction } = {},
): Promise<AccessTokenProvider> {
  const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId, ...overrides });
  const provider = await createAccessTokenProvider(config, {
    fhirBaseUrl: authorizationServer.fhirBaseUrl,
    dataDir,
    ...options,
  });
  authorizationServer.registerClient({ clientId, jwks: provider.jwks, allowedScopes: allScopes });
  return provider;
}

async function readPatients(token: string | undefined): Promise<number> {
  const response = await fetch(`${authorizationServer.fhirBaseUrl}/Patient`, {
    headers: token ? { authorization: `Bearer ${token}` } : {},
  });
  await response.body?.cancel();
  return response.status;
}

const clientCredentialRequests = () =>
  authorizationServer.tokenRequests.filter((request) => request.grantType === 'client_credentials');

describe('SMART Backend Services token provider', () => {
  it('obtains one token and reuses it for many FHIR calls', async () => {
    const provider = await registeredProvider();
    for (let call = 0; call < 10; call += 1) expect(await readPatients(await provider.getToken())).toBe(200);
    expect(clientCredentialRequests()).toHaveLength(1);
    expect(clientCredentialRequests()[0].outcome).toBe('issued');
  });

  it('shares one token request among concurrent callers (single flight)', async () => {
    const provider = await registeredProvider();
    const tokens = await Promise.all(Array.from({ length: 25 }, () => provider.getToken()));
    expect(new Set(tokens).size).toBe(1);
    expect(clientCredentialRequests()).toHaveLength(1);
  });

  it('after a 401, invalidate() leads to exactly one new token and the retry succeeds', async () => {
    const provider = await registeredProvider();
    const first = await provider.getToken();
    expect(await readPatients(first)).toBe(200);
    authorizationServer.revokeAllAccessTokens();
    expect(await readPatients(first)).toBe(401);
    provider.invalidate(first);
    const second = await provider.getToken();
    expect(second).not.toBe(first);
    expect(await readPatients(second)).toBe(200);
    // A late caller still holding the refused token must not throw away the fresh one.
    provider.invalidate(first);
    expect(await provider.getToken()).toBe(second);
    expect(clientCredentialRequests()).toHaveLength(2);
  });

  it('asks again shortly before expires_in', async () => {
    let clock = Date.now();
    authorizationServer.misbehave.accessTokenLifetimeSeconds = 100;
    const provider = await registeredProvider({ assertionLifetimeSeconds: 60 }, { now: () => clock });
    const first = await provider.getToken();
    clock += 80_000;
    expect(await provider.getToken()).toBe(first);
    clock += 15_000; // 95 s of 100: inside the refresh margin
    expect(await provider.getToken()).not.toBe(first);
    expect(clientCredentialRequests()).toHaveLength(2);
  });

  it('signs assertions as SMART requires (ES384 by default, kid, typ, iss = sub, aud, exp, fresh jti)', async () => {
    const provider = await registeredProvider();
    await provider.getToken();
    provider.invalidate();
    await provider.getToken();
    const [first, second] = clientCredentialRequests().map((request) => request.assertion!);
    expect(first.header).toEqual({ alg: 'ES384', kid: provider.jwks!.keys[0].kid, typ: 'JWT' });
    expect(first.payload.iss).toBe(clientId);
    expect(first.payload.sub).toBe(clientId);
    expect(first.payload.aud).toBe(authorizationServer.tokenUrl);
    const nowSeconds = Date.now() / 1000;
    expect(first.payload.exp! - nowSeconds).toBeLessThanOrEqual(300);
    expect(first.payload.exp! - nowSeconds).toBeGreaterThan(0);
    expect(first.payload.jti).toMatch(/^[0-9a-f-]{36}$/);
    expect(second.payload.jti).not.toBe(first.payload.jti);
  });

  it('signs with RS384 when configured', async () => {
    const provider = await registeredProvider({ alg: 'RS384' });
    expect(await readPatients(await provider.getToken())).toBe(200);
    expect(clientCredentialRequests()[0].assertion?.header.alg).toBe('RS384');
    expect(provider.jwks!.keys[0]).toMatchObject({ kty: 'RSA', alg: 'RS384' });
  });

  it('fails with a message naming the missing scope when the grant is narrower', async () => {
    authorizationServer.misbehave.grantedScopeOverride = allScopes
      .filter((scope) => scope !== 'system/Provenance.cs')
      .join(' ');
    const provider = await registeredProvider();
    await expect(provider.getToken()).rejects.toThrow(/missing system\/Provenance\.cs \(granted:/);
    authorizationServer.misbehave.grantedScopeOverride = 'system/*.read system/*.write';
    expect(await provider.getToken()).toEqual(expect.any(String));
  });

  it('surfaces the OAuth error when the server does not know the key', async () => {
    const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'nobody-registered-me' });
    const provider = await createAccessTokenProvider(config, {
      fhirBaseUrl: authorizationServer.fhirBaseUrl,
      dataDir,
    });
    await expect(provider.getToken()).rejects.toThrow(/HTTP 401\): invalid_client: unknown client/);
  });

  it('refuses a discovered token endpoint on plain http off loopback, sending it nothing', async () => {
    const requested: string[] = [];
    const fakeFetch = async (input: string | URL) => {
      requested.push(String(input));
      return Response.json({ token_endpoint: 'http://auth.example.org/token' });
    };
    const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId });
    const provider = await createAccessTokenProvider(config, {
      fhirBaseUrl: 'https://fhir.example.org/r4',
      dataDir,
      fetch: fakeFetch,
    });
    await expect(provider.getToken()).rejects.toThrow(/must use https/);
    expect(requested).toEqual(['https://fhir.example.org/r4/.well-known/smart-configuration']);
  });

  it('uses a configured token URL without discovery, and refuses one on plain http off loopback', async () => {
    const requested: string[] = [];
    const recordingFetch: FetchFunction = (input, init) => {
      requested.push(String(input));
      return fetch(input, init);
    };
    const provider = await registeredProvider(
      { tokenUrl: authorizationServer.tokenUrl },
      { fetch: recordingFetch },
    );
    expect(await readPatients(await provider.getToken())).toBe(200);
    expect(requested).toEqual([authorizationServer.tokenUrl]);
    const insecure = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({
        mode: 'smart-backend',
        clientId,
        tokenUrl: 'http://auth.example.org/token',
      }),
      { fhirBaseUrl: authorizationServer.fhirBaseUrl, dataDir, fetch: recordingFetch },
    );
    await expect(insecure.getToken()).rejects.toThrow(/must use https/);
    expect(requested).toHaveLength(1);
  });

  it('static and none modes need no token endpoint', async () => {
    const none = await createAccessTokenProvider(backendAuthConfigSchema.parse(undefined), {
      fhirBaseUrl: 'https://fhir.example.org',
      dataDir,
    });
    expect(none.mode).toBe('none');
    expect(await none.getToken()).toBeUndefined();
    const fixed = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'static', token: 'abc' }),
      {
        fhirBaseUrl: 'https://fhir.example.org',
        dataDir,
      },
    );
    expect(await fixed.getToken()).toBe('abc');
    expect(() => backendAuthConfigSchema.parse({ mode: 'static' })).toThrow(
      /exactly one of token or tokenFile/,
    );
  });
});

describe('the strict authorization server refuses bad assertions', () => {
  async function postAssertion(assertion: string) {
    const response = await fetch(authorizationServer.tokenUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        grant_type: 'client_credentials',
        scope: 'system/Patient.rs',
        client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-bearer',
        client_assertion: assertion,
      }),
    });
    return {
      status: response.status,
      body: (await response.json()) as { error?: string; error_description?: string },
    };
  }

  it('rejects a replayed jti', async () => {
    const bodies: string[] = [];
    const recordingFetch = async (input: string | URL, init?: RequestInit) => {
      if (init?.body instanceof URLSearchParams) bodies.push(init.body.get('client_assertion') ?? '');
      return fetch(input, init);
    };
    const provider = await registeredProvider({}, { fetch: recordingFetch });
    await provider.getToken();
    const replay = await postAssertion(bodies[0]);
    expect(replay.status).toBe(401);
    expect(replay.body.error_description).toMatch(/jti replayed/);
  });

  it('rejects exp more than five minutes ahead, wrong aud, wrong iss/sub and a wrong alg', async () => {
    const provider = await registeredProvider();
    const key = provider.signingKey!;
    const base = () =>
      new SignJWT({})
        .setProtectedHeader({ alg: 'ES384', kid: key.kid, typ: 'JWT' })
        .setIssuer(clientId)
        .setSubject(clientId)
        .setAudience(authorizationServer.tokenUrl)
        .setIssuedAt()
        .setJti(crypto.randomUUID());
    const farExp = await base().setExpirationTime('10m').sign(key.privateKey);
    expect((await postAssertion(farExp)).body.error_description).toMatch(/more than 5 minutes/);
    const wrongAud = await base()
      .setAudience('https://elsewhere.example/token')
      .setExpirationTime('4m')
      .sign(key.privateKey);
    expect((await postAssertion(wrongAud)).body.error_description).toMatch(/aud/);
    const wrongSub = await base().setSubject('someone-else').setExpirationTime('4m').sign(key.privateKey);
    expect((await postAssertion(wrongSub)).body.error_description).toMatch(/sub/);
    const es256 = await generateKeyPair('ES256');
    const wrongAlg = await new SignJWT({})
      .setProtectedHeader({ alg: 'ES256', kid: key.kid, typ: 'JWT' })
      .setIssuer(clientId)
      .setSubject(clientId)
      .setAudience(authorizationServer.tokenUrl)
      .setExpirationTime('4m')
      .setJti(crypto.randomUUID())
      .sign(es256.privateKey);
    expect((await postAssertion(wrongAlg)).body.error_description).toMatch(/alg ES256 not accepted/);
    const good = await base().setExpirationTime('4m').sign(key.privateKey);
    expect((await postAssertion(good)).status).toBe(200);
  });
});

describe('signing keys and the JWKS endpoint', () => {
  let server: Server | undefined;
  afterEach(async () => {
    await new Promise((resolve) => (server ? server.close(resolve) : resolve(undefined)));
    server = undefined;
  });

  it('generates a key on first start, keeps it with mode 0600 and reloads the same key', async () => {
    const first = await loadSigningKey({ alg: 'ES384', dataDir });
    expect(first.generated).toBe(true);
    const file = generatedKeyPath(dataDir, 'ES384');
    expect((await stat(file)).mode & 0o777).toBe(0o600);
    expect(JSON.parse(await readFile(file, 'utf8')).d).toEqual(expect.any(String));
    const second = await loadSigningKey({ alg: 'ES384', dataDir });
    expect(second.generated).toBe(false);
    expect(second.kid).toBe(first.kid);
    expect(second.publicJwk).toEqual(first.publicJwk);
    // The reloaded key signs what the first key's public half verifies: the registration stays valid.
    const provider = await registeredProvider();
    expect(provider.jwks!.keys[0].kid).toBe(first.kid);
    expect(await readPatients(await provider.getToken())).toBe(200);
  });

  it('reads a PEM key file and refuses a key that does not fit the algorithm', async () => {
    const { writeFile } = await import('node:fs/promises');
    const { generateKeyPairSync } = await import('node:crypto');
    const ec = generateKeyPairSync('ec', { namedCurve: 'P-384' });
    const pemFile = path.join(dataDir, 'key.pem');
    await writeFile(pemFile, ec.privateKey.export({ format: 'pem', type: 'sec1' }));
    const loaded = await loadSigningKey({ alg: 'ES384', dataDir, keyFile: pemFile, keyId: 'site-key-1' });
    expect(loaded.kid).toBe('site-key-1');
    expect(loaded.publicJwk).toMatchObject({ kty: 'EC', crv: 'P-384', kid: 'site-key-1' });
    await expect(loadSigningKey({ alg: 'RS384', dataDir, keyFile: pemFile })).rejects.toThrow(
      /RS384 needs an RSA key/,
    );
  });

  it('publishes the previous key next to the new one during a rotation and signs with the new one', async () => {
    const previous = await loadSigningKey({ alg: 'ES384', dataDir });
    const { writeFile } = await import('node:fs/promises');
    const { generateKeyPairSync } = await import('node:crypto');
    const nextKeyFile = path.join(dataDir, 'next.pem');
    await writeFile(
      nextKeyFile,
      generateKeyPairSync('ec', { namedCurve: 'P-384' }).privateKey.export({ format: 'pem', type: 'pkcs8' }),
    );
    const provider = await registeredProvider({
      keyFile: nextKeyFile,
      publishedKeyFiles: generatedKeyPath(dataDir, 'ES384'),
    });
    const kids = provider.jwks!.keys.map((key) => key.kid);
    expect(kids).toEqual([provider.signingKey!.kid, previous.kid]);
    expect(provider.signingKey!.kid).not.toBe(previous.kid);
    for (const key of provider.jwks!.keys) expect(key).not.toHaveProperty('d');
    expect(await readPatients(await provider.getToken())).toBe(200);
    expect(clientCredentialRequests()[0].assertion?.header.kid).toBe(provider.signingKey!.kid);
  });

  it('serves the public JWKS with Cache-Control and without private members, usable as a JWKS URL', async () => {
    const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'jwks-url-client' });
    const provider = await createAccessTokenProvider(config, {
      fhirBaseUrl: authorizationServer.fhirBaseUrl,
      dataDir,
    });
    const app = express();
    app.use(createSmartLaunch({ launch: undefined, jwks: provider.jwks }).router);
    server = createServer(app);
    await new Promise<void>((resolve) => server!.listen(0, '127.0.0.1', resolve));
    const jwksUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/.well-known/jwks.json`;

    const response = await fetch(jwksUrl);
    expect(response.status).toBe(200);
    expect(response.headers.get('cache-control')).toMatch(/max-age=\d+/);
    const body = (await response.json()) as { keys: Record<string, unknown>[] };
    expect(body.keys).toHaveLength(1);
    expect(body.keys[0]).toMatchObject({
      kty: 'EC',
      crv: 'P-384',
      alg: 'ES384',
      use: 'sig',
      kid: provider.signingKey!.kid,
    });
    expect(body.keys[0]).not.toHaveProperty('d');

    authorizationServer.registerClient({ clientId: 'jwks-url-client', jwksUrl, allowedScopes: allScopes });
    const token = await provider.getToken();
    expect(await readPatients(token)).toBe(200);
    expect(authorizationServer.tokenRequests.at(-1)).toMatchObject({
      outcome: 'issued',
      clientId: 'jwks-url-client',
      assertion: { header: { kid: provider.signingKey!.kid } },
    });
  });
});
