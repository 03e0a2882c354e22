import { randomUUID } from 'node:crypto';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { CapabilityStatement, Encounter, Patient } from 'fhir/r4.js';
import { createRemoteJWKSet, exportJWK, generateKeyPair, type JWK, jwtVerify, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { loadSigningKey, type SigningKey } from '../../fhir/signing-keys.ts';
import { beginLaunch, completeLaunch, refreshLaunch } from '../../fhir/smart-app-launch.ts';
import {
  type AccessTokenProvider,
  clientAssertionType,
  createAccessTokenProvider,
  createClientAssertion,
} from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema } from '../../src/config/auth-config.ts';
import { type AuthorizedSandbox, startAuthorizedSandbox } from './authorized-sandbox.ts';

/**
 * The sandbox's SMART authorization server over HTTP, driven by the service's own SMART client code where it
 * can be (Backend Services provider, App Launch begin/complete/refresh) and by hand-made requests for every
 * refusal: each must carry the OAuth error code the specifications name.
 */
let running: AuthorizedSandbox;
let dataDir: string;
let backendKey: SigningKey;
let jwksFetches = 0;
let jwksServed = true;
const patient: Patient = { resourceType: 'Patient', id: 'as-patient-1', name: [{ family: 'Synthetic' }] };
const otherPatient: Patient = { resourceType: 'Patient', id: 'as-patient-2' };
const encounter: Encounter = {
  resourceType: 'Encounter',
  id: 'as-encounter-1',
  status: 'finished',
  class: { code: 'AMB' },
  subject: { reference: 'Patient/as-patient-1' },
};
const redirectUri = 'http://127.0.0.1:9/smart/callback';
const launchScopes = [
  'launch',
  'openid',
  'fhirUser',
  'online_access',
  'patient/Patient.r',
  'patient/Encounter.rs',
];

async function tokenRequest(
  form: Record<string, string>,
): Promise<{ status: number; body: Record<string, unknown> }> {
  const response = await fetch(running.authorization.tokenUrl, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded', accept: 'application/json' },
    body: new URLSearchParams(form),
  });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

/** A client_credentials request with a hand-made assertion; by default a valid one from `backend-inline`. */
async function clientCredentials(
  assertion: { header?: Record<string, unknown>; claims?: Record<string, unknown>; key?: CryptoKey },
  scope = 'system/Patient.rs',
) {
  const now = Math.floor(Date.now() / 1000);
  const jwt = await new SignJWT({
    iss: 'backend-inline',
    sub: 'backend-inline',
    aud: running.authorization.tokenUrl,
    exp: now + 240,
    iat: now,
    jti: randomUUID(),
    ...assertion.claims,
  })
    .setProtectedHeader({ alg: 'ES384', kid: backendKey.kid, typ: 'JWT', ...assertion.header } as {
      alg: string;
    })
    .sign(assertion.key ?? backendKey.privateKey);
  return tokenRequest({
    grant_type: 'client_credentials',
    scope,
    client_assertion_type: clientAssertionType,
    client_assertion: jwt,
  });
}

/** Follows the browser's redirects through authorize and the EHR's sign-in, keeping cookies, up to the app's redirect. */
async function authorizeInBrowser(authorizeUrl: string): Promise<URL> {
  const cookies = new Map<string, string>();
  let url = authorizeUrl;
  for (let hop = 0; hop < 10; hop++) {
    if (url.startsWith(redirectUri)) return new URL(url);
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join('; ') },
    });
    for (const cookie of response.headers.getSetCookie()) {
      const [pair] = cookie.split(';');
      const [name, ...value] = pair.split('=');
      cookies.set(name.trim(), value.join('='));
    }
    const location = response.headers.get('location');
    if (!location) throw new Error(`authorize stopped at HTTP ${response.status}: ${await response.text()}`);
    url = new URL(location, url).href;
  }
  throw new Error('too many redirects');
}

async function launch(options: { launch?: string; scopes?: string[]; clientId?: string } = {}) {
  return beginLaunch({
    fhirBaseUrl: running.fhirBaseUrl,
    launch: options.launch,
    clientId: options.clientId ?? 'review-app',
    redirectUri,
    scopes: options.scopes ?? launchScopes,
  });
}

beforeAll(async () => {
  running = await startAuthorizedSandbox();
  await running.sandbox.seed([patient, otherPatient, encounter]);
  dataDir = await mkdtemp(path.join(tmpdir(), 'sandbox-authorization-'));
  backendKey = await loadSigningKey({ alg: 'ES384', dataDir });
  running.app.get('/client/jwks.json', (_request, response) => {
    jwksFetches++;
    if (!jwksServed) {
      response.status(404).json({ error: 'not yet' });
      return;
    }
    response.json({ keys: [backendKey.publicJwk] });
  });
  running.authorization.registerClient({
    clientId: 'backend-inline',
    jwks: { keys: [backendKey.publicJwk as Record<string, unknown>] },
    scopes: ['system/Patient.rs', 'system/Encounter.rs'],
  });
  running.authorization.registerClient({
    clientId: 'review-app',
    redirectUris: [redirectUri],
    scopes: [...launchScopes, 'launch/patient', 'offline_access'],
  });
}, 120_000);

afterAll(async () => {
  await running?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('discovery', () => {
  it('advertises the authorization server at .well-known/smart-configuration and in the CapabilityStatement', async () => {
    const configuration = await (
      await fetch(`${running.fhirBaseUrl}/.well-known/smart-configuration`)
    ).json();
    expect(configuration).toMatchObject({
      token_endpoint: `${running.origin}/sandbox/auth/token`,
      authorization_endpoint: `${running.origin}/sandbox/auth/authorize`,
      code_challenge_methods_supported: ['S256'],
      token_endpoint_auth_signing_alg_values_supported: ['ES384', 'RS384'],
    });
    expect(configuration.capabilities).toEqual(
      expect.arrayContaining([
        'launch-ehr',
        'launch-standalone',
        'client-confidential-asymmetric',
        'permission-v2',
      ]),
    );
    const metadata = (await (await fetch(`${running.fhirBaseUrl}/metadata`)).json()) as CapabilityStatement;
    const oauthUris = metadata.rest?.[0].security?.extension?.find((extension) =>
      extension.url.endsWith('/oauth-uris'),
    );
    expect(oauthUris?.extension).toEqual([
      { url: 'authorize', valueUri: configuration.authorization_endpoint },
      { url: 'token', valueUri: configuration.token_endpoint },
    ]);
  });
});

describe('Backend Services: client_credentials with private_key_jwt', () => {
  let provider: AccessTokenProvider;

  it('fetches a JWKS-URL client’s keys when the token is requested, not at registration', async () => {
    provider = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({
        mode: 'smart-backend',
        clientId: 'backend-by-url',
        keyFile: undefined,
        scopes: 'system/Patient.rs system/Encounter.rs system/Observation.rs',
      }),
      { fhirBaseUrl: running.fhirBaseUrl, dataDir },
    );
    running.authorization.registerClient({
      clientId: 'backend-by-url',
      jwksUri: `${running.origin}/client/jwks.json`,
      scopes: ['system/*.rs'],
    });
    expect(jwksFetches).toBe(0);
    const token = await provider.getToken();
    expect(jwksFetches).toBe(1);
    const patientRead = await fetch(`${running.fhirBaseUrl}/Patient/${patient.id}`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(patientRead.status).toBe(200);
  });

  it('refuses the token when the JWKS URL does not serve the keys at token time (invalid_client)', async () => {
    running.authorization.registerClient({
      clientId: 'backend-jwks-missing',
      jwksUri: `${running.origin}/client/jwks.json?for=missing`,
      scopes: ['system/*.rs'],
    });
    jwksServed = false;
    try {
      const refused = await clientCredentials({
        claims: { iss: 'backend-jwks-missing', sub: 'backend-jwks-missing' },
      });
      expect(refused.status).toBe(401);
      expect(refused.body.error).toBe('invalid_client');
    } finally {
      jwksServed = true;
    }
  });

  it('fetches the JWKS on every token request: a key no longer served is refused at once, and accepted again when served', async () => {
    const otherKey = await generateKeyPair('ES384', { extractable: true });
    // The same kid with another key: the client's signature no longer matches what its JWKS URL publishes.
    const otherJwk = { ...(await exportJWK(otherKey.publicKey)), kid: backendKey.kid, alg: 'ES384' };
    let serving: 'key' | 'nothing' | 'other key' = 'key';
    let fetches = 0;
    running.app.get('/client/changing-jwks.json', (_request, response) => {
      fetches++;
      if (serving === 'nothing') {
        response.status(404).json({ error: 'gone' });
        return;
      }
      // max-age as a CDN would send it: the keys must still be read again on the next request.
      response.set('cache-control', 'public, max-age=3600');
      response.json({ keys: [serving === 'key' ? backendKey.publicJwk : otherJwk] });
    });
    running.authorization.registerClient({
      clientId: 'backend-jwks-changing',
      jwksUri: `${running.origin}/client/changing-jwks.json`,
      scopes: ['system/*.rs'],
    });
    const request = () =>
      clientCredentials({ claims: { iss: 'backend-jwks-changing', sub: 'backend-jwks-changing' } });

    expect((await request()).status).toBe(200);
    expect(fetches).toBe(1);

    serving = 'nothing';
    const whileMissing = await request();
    expect(whileMissing.status).toBe(401);
    expect(whileMissing.body.error).toBe('invalid_client');
    expect(fetches).toBe(2);

    serving = 'key';
    expect((await request()).status).toBe(200);
    expect(fetches).toBe(3);

    serving = 'other key';
    const whileChanged = await request();
    expect(whileChanged.status).toBe(401);
    expect(whileChanged.body.error).toBe('invalid_client');

    serving = 'key';
    const served = await request();
    expect(served.status).toBe(200);
    expect(String(served.body.scope)).toBe('system/Patient.rs');
  });

  it('issues a token for inline keys, carrying only the requested scopes the registration covers', async () => {
    const issued = await clientCredentials({}, 'system/Patient.rs system/Observation.rs system/Encounter.r');
    expect(issued.status).toBe(200);
    expect(issued.body).toMatchObject({ token_type: 'Bearer', expires_in: 300 });
    expect(String(issued.body.scope).split(' ').sort()).toEqual(['system/Encounter.r', 'system/Patient.rs']);
    // The scope that was asked for but not granted is not honoured either.
    const observations = await fetch(`${running.fhirBaseUrl}/Observation`, {
      headers: { authorization: `Bearer ${issued.body.access_token}` },
    });
    expect(observations.status).toBe(403);
  });

  it('refuses a request for none of the registered scopes (invalid_scope)', async () => {
    const refused = await clientCredentials({}, 'system/Observation.rs');
    expect(refused.status).toBe(400);
    expect(refused.body.error).toBe('invalid_scope');
  });

  it('refuses an unknown client (invalid_client)', async () => {
    const refused = await clientCredentials({ claims: { iss: 'nobody', sub: 'nobody' } });
    expect(refused.status).toBe(401);
    expect(refused.body.error).toBe('invalid_client');
  });

  it('refuses an assertion signed with an algorithm other than ES384 or RS384 (invalid_client)', async () => {
    const p256 = await generateKeyPair('ES256', { extractable: true });
    const publicJwk: JWK = { ...(await exportJWK(p256.publicKey)), kid: 'p256', alg: 'ES256' };
    running.authorization.registerClient({
      clientId: 'backend-es256',
      jwks: { keys: [publicJwk as Record<string, unknown>] },
      scopes: ['system/Patient.rs'],
    });
    const refused = await clientCredentials({
      header: { alg: 'ES256', kid: 'p256' },
      claims: { iss: 'backend-es256', sub: 'backend-es256' },
      key: p256.privateKey,
    });
    expect(refused.status).toBe(401);
    expect(refused.body.error).toBe('invalid_client');
  });

  it('refuses an assertion signed by a key the client did not register (invalid_client)', async () => {
    const stranger = await generateKeyPair('ES384');
    const refused = await clientCredentials({ key: stranger.privateKey });
    expect(refused.body.error).toBe('invalid_client');
  });

  it('refuses an expired assertion (invalid_client)', async () => {
    const now = Math.floor(Date.now() / 1000);
    const refused = await clientCredentials({ claims: { iat: now - 600, exp: now - 60 } });
    expect(refused.status).toBe(401);
    expect(refused.body.error).toBe('invalid_client');
  });

  it('refuses an assertion whose exp is more than five minutes ahead (invalid_client)', async () => {
    const now = Math.floor(Date.now() / 1000);
    const refused = await clientCredentials({ claims: { exp: now + 400 } });
    expect(refused.status).toBe(401);
    expect(refused.body).toMatchObject({ error: 'invalid_client' });
    expect(String(refused.body.error_description)).toMatch(/at most 300 s/);
    // Five minutes exactly is within the rule.
    expect((await clientCredentials({ claims: { exp: now + 299 } })).status).toBe(200);
  });

  it('refuses an aud other than the token URL, even the issuer oidc-provider would accept (invalid_client)', async () => {
    for (const aud of [
      running.authorization.issuer,
      running.fhirBaseUrl,
      `${running.authorization.tokenUrl}/`,
    ]) {
      const refused = await clientCredentials({ claims: { aud } });
      expect(refused.body.error, aud).toBe('invalid_client');
    }
    // The issuer is what oidc-provider itself accepts: the SMART rule is what refuses it.
    const issuerAudience = await clientCredentials({ claims: { aud: running.authorization.issuer } });
    expect(String(issuerAudience.body.error_description)).toMatch(/aud must be the token URL/);
  });

  it('never accepts the same jti twice (invalid_client)', async () => {
    const jti = randomUUID();
    expect((await clientCredentials({ claims: { jti } })).status).toBe(200);
    const replayed = await clientCredentials({ claims: { jti } });
    expect(replayed.status).toBe(401);
    expect(replayed.body.error).toBe('invalid_client');
  });

  it('refuses an assertion whose header names no key or another typ (invalid_client)', async () => {
    expect((await clientCredentials({ header: { kid: undefined } })).body.error).toBe('invalid_client');
    expect((await clientCredentials({ header: { typ: 'at+jwt' } })).body.error).toBe('invalid_client');
  });

  it('refuses a request without a client assertion (invalid_client)', async () => {
    const refused = await tokenRequest({ grant_type: 'client_credentials', client_id: 'backend-inline' });
    expect(refused.body.error).toBe('invalid_client');
  });
});

describe('App Launch: authorization code with PKCE', () => {
  it('completes an EHR launch bound to a patient and encounter, with an id_token the published JWKS verifies', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id!, encounter: encounter.id });
    const { authorizeUrl, pending } = await launch({ launch: launchId });
    const callback = await authorizeInBrowser(authorizeUrl);
    expect(callback.searchParams.get('state')).toBe(pending.state);
    const result = await completeLaunch(pending, {
      code: callback.searchParams.get('code')!,
      clientId: 'review-app',
    });
    expect(result).toMatchObject({
      patient: patient.id,
      encounter: encounter.id,
      fhirUser: `${running.fhirBaseUrl}/Practitioner/sbx-clinician`,
    });
    expect(result.scopes).toEqual(expect.arrayContaining(launchScopes));
    expect(result.refreshToken).toBeTruthy();
    // The signed-in clinician is a Practitioner with a name, who can sign.
    const clinician = await (await fetch(`${running.fhirBaseUrl}/Practitioner/sbx-clinician`)).json();
    expect(clinician.name?.[0]?.family).toBeTruthy();
    // The token reads the patient in context, and nobody else.
    const ownChart = await fetch(`${running.fhirBaseUrl}/Patient/${patient.id}`, {
      headers: { authorization: `Bearer ${result.accessToken}` },
    });
    expect(ownChart.status).toBe(200);
    const otherChart = await fetch(`${running.fhirBaseUrl}/Patient/${otherPatient.id}`, {
      headers: { authorization: `Bearer ${result.accessToken}` },
    });
    expect(otherChart.status).toBe(403);
  });

  it('signs id_tokens with a key from the published JWKS, for the client, naming the fhirUser', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id!, encounter: encounter.id });
    const { authorizeUrl, pending } = await launch({ launch: launchId });
    const code = (await authorizeInBrowser(authorizeUrl)).searchParams.get('code')!;
    const exchanged = await tokenRequest({
      grant_type: 'authorization_code',
      code,
      redirect_uri: redirectUri,
      code_verifier: pending.codeVerifier,
      client_id: 'review-app',
    });
    expect(exchanged.status).toBe(200);
    const configuration = await (
      await fetch(`${running.fhirBaseUrl}/.well-known/smart-configuration`)
    ).json();
    const { payload, protectedHeader } = await jwtVerify(
      String(exchanged.body.id_token),
      createRemoteJWKSet(new URL(configuration.jwks_uri)),
      { issuer: configuration.issuer, audience: 'review-app' },
    );
    expect(protectedHeader.alg).toBe('RS256');
    expect(payload).toMatchObject({
      sub: 'sbx-clinician',
      fhirUser: `${running.fhirBaseUrl}/Practitioner/sbx-clinician`,
    });
  });

  it('completes a standalone launch: the server puts a patient in context', async () => {
    const { authorizeUrl, pending } = await launch({
      scopes: ['launch/patient', 'openid', 'fhirUser', 'patient/Patient.r'],
    });
    const callback = await authorizeInBrowser(authorizeUrl);
    const result = await completeLaunch(pending, {
      code: callback.searchParams.get('code')!,
      clientId: 'review-app',
    });
    expect(result.patient).toBe(patient.id);
    expect(result.encounter).toBeUndefined();
    expect(result.refreshToken).toBeUndefined();
  });

  it('refreshes an online_access launch, rotating the refresh token; a used one is refused (invalid_grant)', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id!, encounter: encounter.id });
    const { authorizeUrl, pending } = await launch({ launch: launchId });
    const callback = await authorizeInBrowser(authorizeUrl);
    const first = await completeLaunch(pending, {
      code: callback.searchParams.get('code')!,
      clientId: 'review-app',
    });
    const renewed = await refreshLaunch(
      { tokenEndpoint: first.tokenEndpoint, refreshToken: first.refreshToken!, patient: first.patient },
      { clientId: 'review-app' },
    );
    expect(renewed.accessToken).not.toBe(first.accessToken);
    expect(renewed.refreshToken).not.toBe(first.refreshToken);
    expect(renewed.scopes).toEqual(expect.arrayContaining(['patient/Patient.r', 'patient/Encounter.rs']));
    const read = await fetch(`${running.fhirBaseUrl}/Encounter/${encounter.id}`, {
      headers: { authorization: `Bearer ${renewed.accessToken}` },
    });
    expect(read.status).toBe(200);
    const reused = await tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: first.refreshToken!,
      client_id: 'review-app',
    });
    expect(reused.body.error).toBe('invalid_grant');
  });

  it('grants offline_access without prompt=consent, as SMART does', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id! });
    const { authorizeUrl, pending } = await launch({
      launch: launchId,
      scopes: ['launch', 'offline_access', 'patient/Patient.r'],
    });
    const callback = await authorizeInBrowser(authorizeUrl);
    const result = await completeLaunch(pending, {
      code: callback.searchParams.get('code')!,
      clientId: 'review-app',
    });
    expect(result.scopes).toContain('offline_access');
    expect(result.refreshToken).toBeTruthy();
  });

  it('refuses a refresh asking for more scope than was granted (invalid_scope)', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id! });
    const { authorizeUrl, pending } = await launch({
      launch: launchId,
      scopes: ['launch', 'online_access', 'patient/Patient.r'],
    });
    const callback = await authorizeInBrowser(authorizeUrl);
    const granted = await completeLaunch(pending, {
      code: callback.searchParams.get('code')!,
      clientId: 'review-app',
    });
    const wider = await tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: granted.refreshToken!,
      client_id: 'review-app',
      scope: 'patient/Patient.r patient/Encounter.rs',
    });
    expect(wider.status).toBe(400);
    expect(wider.body.error).toBe('invalid_scope');
    // A narrower one is fine, and carries only what was asked.
    const narrower = await tokenRequest({
      grant_type: 'refresh_token',
      refresh_token: granted.refreshToken!,
      client_id: 'review-app',
      scope: 'patient/Patient.r',
    });
    expect(narrower.status).toBe(200);
    expect(narrower.body.scope).toBe('patient/Patient.r');
  });

  it('refuses a code exchanged with the wrong PKCE verifier (invalid_grant), and a code used twice (invalid_grant)', async () => {
    const launchId = running.authorization.createLaunch({ patient: patient.id! });
    const { authorizeUrl, pending } = await launch({ launch: launchId });
    const code = (await authorizeInBrowser(authorizeUrl)).searchParams.get('code')!;
    const exchange = (verifier: string) =>
      tokenRequest({
        grant_type: 'authorization_code',
        code,
        redirect_uri: redirectUri,
        code_verifier: verifier,
        client_id: 'review-app',
      });
    const wrong = await exchange(`${pending.codeVerifier.slice(0, -4)}AAAA`);
    expect(wrong.body.error).toBe('invalid_grant');

    const launchAgain = await launch({
      launch: running.authorization.createLaunch({ patient: patient.id! }),
    });
    const secondCode = (await authorizeInBrowser(launchAgain.authorizeUrl)).searchParams.get('code')!;
    const exchangeSecond = () =>
      tokenRequest({
        grant_type: 'authorization_code',
        code: secondCode,
        redirect_uri: redirectUri,
        code_verifier: launchAgain.pending.codeVerifier,
        client_id: 'review-app',
      });
    const first = await exchangeSecond();
    expect(first.status).toBe(200);
    const reused = await exchangeSecond();
    expect(reused.body.error).toBe('invalid_grant');
    // Reusing the code revokes what it granted.
    const afterReuse = await fetch(`${running.fhirBaseUrl}/Patient/${patient.id}`, {
      headers: { authorization: `Bearer ${first.body.access_token}` },
    });
    expect(afterReuse.status).toBe(401);
  });

  it('refuses a code exchanged with another redirect_uri (invalid_grant)', async () => {
    const { authorizeUrl, pending } = await launch({
      launch: running.authorization.createLaunch({ patient: patient.id! }),
    });
    const code = (await authorizeInBrowser(authorizeUrl)).searchParams.get('code')!;
    const refused = await tokenRequest({
      grant_type: 'authorization_code',
      code,
      redirect_uri: 'http://127.0.0.1:9/elsewhere',
      code_verifier: pending.codeVerifier,
      client_id: 'review-app',
    });
    expect(refused.body.error).toBe('invalid_grant');
  });

  async function authorizeError(change: (url: URL) => void): Promise<string | null> {
    const { authorizeUrl } = await launch({
      launch: running.authorization.createLaunch({ patient: patient.id! }),
    });
    const url = new URL(authorizeUrl);
    change(url);
    const callback = await authorizeInBrowser(url.href);
    expect(callback.searchParams.get('code')).toBeNull();
    return callback.searchParams.get('error');
  }

  it('refuses an authorization request without PKCE, or with the plain method (invalid_request)', async () => {
    expect(
      await authorizeError((url) => {
        url.searchParams.delete('code_challenge');
        url.searchParams.delete('code_challenge_method');
      }),
    ).toBe('invalid_request');
    expect(await authorizeError((url) => url.searchParams.set('code_challenge_method', 'plain'))).toBe(
      'invalid_request',
    );
  });

  it('refuses an aud that is not this FHIR server, and an unknown launch (invalid_request)', async () => {
    expect(await authorizeError((url) => url.searchParams.set('aud', 'https://other.example/fhir'))).toBe(
      'invalid_request',
    );
    expect(await authorizeError((url) => url.searchParams.delete('aud'))).toBe('invalid_request');
    expect(await authorizeError((url) => url.searchParams.set('launch', 'not-a-launch'))).toBe(
      'invalid_request',
    );
  });

  it('does not redirect to an unregistered redirect_uri', async () => {
    const { authorizeUrl } = await launch({
      launch: running.authorization.createLaunch({ patient: patient.id! }),
    });
    const url = new URL(authorizeUrl);
    url.searchParams.set('redirect_uri', 'http://127.0.0.1:9/attacker');
    const response = await fetch(url, { redirect: 'manual' });
    expect(response.status).toBe(400);
    expect(response.headers.get('location')).toBeNull();
  });

  it('refuses an unknown client at the token endpoint (invalid_client)', async () => {
    const refused = await tokenRequest({
      grant_type: 'authorization_code',
      code: 'whatever',
      redirect_uri: redirectUri,
      code_verifier: 'a'.repeat(43),
      client_id: 'not-registered',
    });
    expect(refused.body.error).toBe('invalid_client');
  });
});

describe('a confidential launch client', () => {
  it('authenticates its code exchange with private_key_jwt', async () => {
    running.authorization.registerClient({
      clientId: 'confidential-app',
      redirectUris: [redirectUri],
      jwks: { keys: [backendKey.publicJwk as Record<string, unknown>] },
      scopes: ['launch', 'patient/Patient.r'],
    });
    const { authorizeUrl, pending } = await launch({
      clientId: 'confidential-app',
      launch: running.authorization.createLaunch({ patient: patient.id! }),
      scopes: ['launch', 'patient/Patient.r'],
    });
    const code = (await authorizeInBrowser(authorizeUrl)).searchParams.get('code')!;
    const withoutAssertion = await completeLaunch(pending, { code, clientId: 'confidential-app' }).catch(
      (error: unknown) => error,
    );
    expect(withoutAssertion).toBeInstanceOf(OperationOutcomeError);
    const again = await launch({
      clientId: 'confidential-app',
      launch: running.authorization.createLaunch({ patient: patient.id! }),
      scopes: ['launch', 'patient/Patient.r'],
    });
    const secondCode = (await authorizeInBrowser(again.authorizeUrl)).searchParams.get('code')!;
    const result = await completeLaunch(again.pending, {
      code: secondCode,
      clientId: 'confidential-app',
      clientAssertion: (tokenUrl) =>
        createClientAssertion(backendKey, { clientId: 'confidential-app', tokenUrl }),
    });
    expect(result.patient).toBe(patient.id);
    expect(result.scopes).toEqual(['launch', 'patient/Patient.r']);
  });
});
