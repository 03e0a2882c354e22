import { mkdtemp, rm, stat } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { type JsonWebKeySet, loadSigningKey, publicJwks, type SigningKey } from '../../fhir/signing-keys.ts';
import type { FetchFunction } from '../../fhir/smart-discovery.ts';
import { defaultLaunchScopes, smartLaunchConfigSchema } from '../../src/config/auth-config.ts';
import { MemorySessionStore } from '../../src/http/session.ts';
import { createSmartLaunch, type LaunchContext, type SmartSessionData } from '../../src/http/smart-launch.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * The EHR launch and standalone launch end to end over real HTTP: the browser is played by fetch with manual
 * redirects and a one-cookie jar, the EHR's authorization server by the strict test server.
 */
const clientId = 'review-app';
const launchScopes = ['patient/DocumentReference.crus', 'patient/Provenance.c'];

let authorizationServer: SmartAuthorizationServer;
let service: Server;
let serviceUrl: string;
let sessionStore: MemorySessionStore<SmartSessionData>;
let discoveryRequests: string[];

interface StartedService {
  url: string;
  server: Server;
  close(): Promise<void>;
}

/** The service's SMART routes plus two stand-in API routes, registered as a client of the authorization server. */
async function startService(
  options: {
    clientId?: string;
    config?: Record<string, unknown>;
    signingKey?: SigningKey;
    jwks?: JsonWebKeySet;
    now?: () => number;
    registerJwks?: boolean;
    /** Use the configured session store with this data directory instead of the shared in-memory one. */
    dataDir?: string;
  } = {},
): Promise<StartedService> {
  const id = options.clientId ?? clientId;
  const app = express();
  const server = createServer(app);
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  authorizationServer.registerClient({
    clientId: id,
    redirectUris: [`${url}/smart/callback`],
    allowedScopes: launchScopes,
    ...(options.registerJwks ? { jwksUrl: `${url}/.well-known/jwks.json` } : {}),
  });
  const recordingFetch: FetchFunction = (input, init) => {
    discoveryRequests.push(String(input));
    return fetch(input, init);
  };
  const smartLaunch = createSmartLaunch({
    launch: smartLaunchConfigSchema.parse({
      clientId: id,
      allowedIssuers: [authorizationServer.fhirBaseUrl],
      redirectUri: `${url}/smart/callback`,
      // The misbehaviour switches change the smart-configuration between tests: read it fresh every time.
      discoveryCacheSeconds: 0,
      ...options.config,
    }),
    ...(options.dataDir ? { dataDir: options.dataDir } : { sessionStore }),
    fetch: recordingFetch,
    signingKey: options.signingKey,
    jwks: options.jwks,
    now: options.now,
  });
  app.use(smartLaunch.router);
  // What the review API will do with the session: shown here without the token, which never leaves the server.
  app.get('/api/context', smartLaunch.requireLaunchContext(), (_request, response) => {
    const { accessToken, ...visible } = response.locals.launchContext as LaunchContext;
    response.json({
      ...visible,
      tokenWorks: authorizationServer.checkBearer(`Bearer ${accessToken}`) !== undefined,
    });
  });
  app.post('/api/action', smartLaunch.requireLaunchContext(), (_request, response) => {
    response.json({ done: true });
  });
  return {
    url,
    server,
    close: () =>
      new Promise((resolve) =>
        server.close(() => {
          smartLaunch.close();
          resolve();
        }),
      ),
  };
}

beforeAll(async () => {
  authorizationServer = await startSmartAuthorizationServer();
  sessionStore = new MemorySessionStore<SmartSessionData>();
  discoveryRequests = [];
  const started = await startService();
  service = started.server;
  serviceUrl = started.url;
});

afterAll(async () => {
  await new Promise((resolve) => service.close(resolve));
  await authorizationServer.close();
});

beforeEach(() => {
  Object.assign(authorizationServer.misbehave, {
    advertiseS256: true,
    idTokenAudience: undefined,
    idTokenBadSignature: false,
    idTokenExpired: false,
  });
});

/** A browser with one cookie (the session), following nothing by itself. */
class Browser {
  cookie: string | undefined;
  readonly setCookieHeaders: string[] = [];

  async get(url: string, headers: Record<string, string> = {}): Promise<Response> {
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { ...headers, ...(this.cookie ? { cookie: this.cookie } : {}) },
    });
    for (const header of response.headers.getSetCookie()) {
      this.setCookieHeaders.push(header);
      this.cookie = header.split(';')[0];
    }
    return response;
  }

  async post(url: string, headers: Record<string, string>): Promise<Response> {
    return fetch(url, {
      method: 'POST',
      headers: { ...headers, ...(this.cookie ? { cookie: this.cookie } : {}) },
    });
  }
}

/** Launch -> authorize; stops with the callback URL the authorization server redirected to. */
async function startLaunch(
  browser: Browser,
  query: string,
  base = serviceUrl,
): Promise<{ authorizeUrl: URL; callbackUrl: URL }> {
  const launchResponse = await browser.get(`${base}/smart/launch${query}`);
  expect(launchResponse.status, await launchResponse.clone().text()).toBe(302);
  const authorizeUrl = new URL(launchResponse.headers.get('location')!);
  const authorizeResponse = await browser.get(authorizeUrl.href);
  expect(authorizeResponse.status).toBe(302);
  return { authorizeUrl, callbackUrl: new URL(authorizeResponse.headers.get('location')!) };
}

async function ehrLaunch(browser: Browser, patient = 'patient-1', base = serviceUrl) {
  const launch = authorizationServer.createLaunch({
    patient,
    encounter: 'encounter-9',
    fhirUser: 'Practitioner/dr-who',
  });
  const iss = encodeURIComponent(authorizationServer.fhirBaseUrl);
  const started = await startLaunch(browser, `?iss=${iss}&launch=${launch}`, base);
  const callback = await browser.get(started.callbackUrl.href);
  return { ...started, launch, callback };
}

async function outcomeText(response: Response): Promise<string> {
  const body = (await response.json()) as { resourceType: string; issue: { diagnostics: string }[] };
  expect(body.resourceType).toBe('OperationOutcome');
  return body.issue[0].diagnostics;
}

describe('SMART EHR launch', () => {
  it('redirects to authorize with PKCE S256, a strong state, aud = iss and the configured scopes', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({ patient: 'patient-1' });
    const { authorizeUrl } = await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    const parameters = authorizeUrl.searchParams;
    expect(authorizeUrl.origin + authorizeUrl.pathname).toBe(authorizationServer.authorizeUrl);
    expect(parameters.get('response_type')).toBe('code');
    expect(parameters.get('client_id')).toBe(clientId);
    expect(parameters.get('code_challenge_method')).toBe('S256');
    expect(parameters.get('code_challenge')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(parameters.get('aud')).toBe(authorizationServer.fhirBaseUrl);
    expect(parameters.get('launch')).toBe(launch);
    expect(parameters.get('scope')).toBe(defaultLaunchScopes);
    expect(parameters.get('scope')).toContain('patient/Observation.r patient/MedicationRequest.r');
    // 43 base64url characters carry 256 bits, above the 122 SMART asks for.
    expect(parameters.get('state')).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(parameters.get('code_verifier')).toBeNull();
    const cookie = browser.setCookieHeaders[0];
    expect(cookie).toMatch(/^__Host-ehr-draft-session=[A-Za-z0-9_-]{43}; /);
    for (const attribute of ['Path=/', 'HttpOnly', 'SameSite=None', 'Secure', 'Partitioned']) {
      expect(cookie).toContain(attribute);
    }
  });

  it('completes the launch, keeps the token server-side and exposes the context to the API', async () => {
    const browser = new Browser();
    const { callback } = await ehrLaunch(browser);
    expect(callback.status, await callback.clone().text()).toBe(302);
    const location = new URL(callback.headers.get('location')!, serviceUrl);
    expect(location.pathname).toBe('/review');
    const launchId = location.searchParams.get('context');
    expect(launchId).toMatch(/^[A-Za-z0-9_-]{22}$/);
    // The session id changed at login, and nothing the browser saw carries the access token.
    expect(browser.setCookieHeaders).toHaveLength(2);
    expect(browser.setCookieHeaders[1].split(';')[0]).not.toBe(browser.setCookieHeaders[0].split(';')[0]);

    const contextResponse = await browser.get(`${serviceUrl}/api/context`);
    expect(contextResponse.status).toBe(200);
    const context = (await contextResponse.json()) as Omit<LaunchContext, 'accessToken'> & {
      tokenWorks: boolean;
    };
    expect(context).toMatchObject({
      launchId,
      patient: 'patient-1',
      encounter: 'encounter-9',
      fhirUser: 'Practitioner/dr-who',
      fhirBaseUrl: authorizationServer.fhirBaseUrl,
      tokenWorks: true,
    });
    expect(context.csrfToken).toMatch(/^[A-Za-z0-9_-]{43}$/);
    expect(context.scopes).toContain('patient/DocumentReference.crus');

    // The pre-login cookie is dead (no session fixation), a POST needs the CSRF token.
    const stale = new Browser();
    stale.cookie = browser.setCookieHeaders[0].split(';')[0];
    expect((await stale.get(`${serviceUrl}/api/context`)).status).toBe(401);
    const withoutCsrf = await browser.post(`${serviceUrl}/api/action`, {});
    expect(withoutCsrf.status).toBe(403);
    expect(await outcomeText(withoutCsrf)).toMatch(/CSRF/);
    expect(
      (await browser.post(`${serviceUrl}/api/action`, { 'x-csrf-token': `${context.csrfToken}x` })).status,
    ).toBe(403);
    expect(
      (await browser.post(`${serviceUrl}/api/action`, { 'x-csrf-token': context.csrfToken })).status,
    ).toBe(200);
  });

  it('answers 401 to the API without a session', async () => {
    const response = await new Browser().get(`${serviceUrl}/api/context`);
    expect(response.status).toBe(401);
    expect(await outcomeText(response)).toMatch(/no SMART launch session/);
  });

  it('keeps two launches in one browser apart and never guesses between them', async () => {
    const browser = new Browser();
    const first = await ehrLaunch(browser, 'patient-a');
    const second = await ehrLaunch(browser, 'patient-b');
    const idOf = (response: Response) =>
      new URL(response.headers.get('location')!, serviceUrl).searchParams.get('context')!;
    expect((await browser.get(`${serviceUrl}/api/context`)).status).toBe(401);
    const a = await browser.get(`${serviceUrl}/api/context`, { 'x-launch-context': idOf(first.callback) });
    expect(((await a.json()) as LaunchContext).patient).toBe('patient-a');
    const b = await browser.get(`${serviceUrl}/api/context?context=${idOf(second.callback)}`);
    expect(((await b.json()) as LaunchContext).patient).toBe('patient-b');
  });

  it('refuses a callback whose state does not match, and a replayed callback', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({
      patient: 'patient-1',
      fhirUser: 'Practitioner/dr-who',
    });
    const { callbackUrl } = await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    const forged = new URL(callbackUrl);
    forged.searchParams.set('state', 'A'.repeat(43));
    const wrongState = await browser.get(forged.href);
    expect(wrongState.status).toBe(401);
    expect(await outcomeText(wrongState)).toMatch(/state parameter does not match/);

    expect((await browser.get(callbackUrl.href)).status).toBe(302);
    const replay = await browser.get(callbackUrl.href);
    expect(replay.status).toBe(401);
    expect(await outcomeText(replay)).toMatch(/state parameter does not match/);
  });

  it('refuses a callback that arrives without the session cookie', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({
      patient: 'patient-1',
      fhirUser: 'Practitioner/dr-who',
    });
    const { callbackUrl } = await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    const response = await new Browser().get(callbackUrl.href);
    expect(response.status).toBe(401);
    expect(await outcomeText(response)).toMatch(/no launch session arrived/);
  });

  it.each([
    ['an id_token with a wrong aud', { idTokenAudience: 'some-other-app' }, /failed the "aud" check/],
    ['an id_token with a bad signature', { idTokenBadSignature: true }, /signature does not verify/],
    ['an expired id_token', { idTokenExpired: true }, /id_token has expired/],
  ])('refuses %s and stores no context', async (_name, misbehaviour, message) => {
    Object.assign(authorizationServer.misbehave, misbehaviour);
    const browser = new Browser();
    const { callback } = await ehrLaunch(browser);
    expect(callback.status).toBe(401);
    expect(await outcomeText(callback)).toMatch(message);
    expect((await browser.get(`${serviceUrl}/api/context`)).status).toBe(401);
  });

  it('refuses a server that does not advertise PKCE S256 before redirecting anywhere', async () => {
    authorizationServer.misbehave.advertiseS256 = false;
    const response = await new Browser().get(
      `${serviceUrl}/smart/launch?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=abc`,
    );
    expect(response.status).toBe(502);
    expect(response.headers.get('location')).toBeNull();
    expect(await outcomeText(response)).toMatch(/does not advertise PKCE S256/);
  });

  it('matches iss ignoring a trailing slash but sends it back as aud exactly as the EHR wrote it', async () => {
    const iss = `${authorizationServer.fhirBaseUrl}/`;
    const response = await new Browser().get(
      `${serviceUrl}/smart/launch?iss=${encodeURIComponent(iss)}&launch=abc`,
    );
    expect(response.status).toBe(302);
    expect(new URL(response.headers.get('location')!).searchParams.get('aud')).toBe(iss);
  });

  it('refuses an iss that is not configured without contacting it', async () => {
    discoveryRequests.length = 0;
    const response = await new Browser().get(
      `${serviceUrl}/smart/launch?iss=${encodeURIComponent('https://attacker.example/fhir')}&launch=abc`,
    );
    expect(response.status).toBe(403);
    expect(await outcomeText(response)).toMatch(/not one of the FHIR servers/);
    expect(discoveryRequests).toEqual([]);
  });

  it('reports an authorization error sent back to the callback', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({ patient: 'patient-1' });
    const { callbackUrl } = await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    const denied = new URL(`${serviceUrl}/smart/callback`);
    denied.searchParams.set('state', callbackUrl.searchParams.get('state')!);
    denied.searchParams.set('error', 'access_denied');
    const response = await browser.get(denied.href);
    expect(response.status).toBe(401);
    expect(await outcomeText(response)).toMatch(/refused the launch \(access_denied/);
  });
});

describe('SMART launch context', () => {
  it('takes the encounter from a 2.2 fhirContext reference and passes need_patient_banner on', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({
      patient: 'patient-3',
      encounter: 'encounter-3',
      encounterAsFhirContext: true,
      needPatientBanner: false,
      fhirUser: 'Practitioner/dr-who',
    });
    const { callbackUrl } = await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    expect((await browser.get(callbackUrl.href)).status).toBe(302);
    const context = (await (await browser.get(`${serviceUrl}/api/context`)).json()) as LaunchContext;
    expect(context).toMatchObject({
      patient: 'patient-3',
      encounter: 'encounter-3',
      needPatientBanner: false,
    });
  });
});

describe('SMART standalone launch', () => {
  it('asks for launch/patient instead of a launch id and takes the patient the server picked', async () => {
    authorizationServer.setStandaloneContext({ patient: 'patient-7', fhirUser: 'Practitioner/dr-no' });
    const browser = new Browser();
    const { authorizeUrl, callbackUrl } = await startLaunch(browser, '');
    expect(authorizeUrl.searchParams.get('launch')).toBeNull();
    expect(authorizeUrl.searchParams.get('scope')?.split(' ')).toContain('launch/patient');
    expect(authorizeUrl.searchParams.get('scope')?.split(' ')).not.toContain('launch');
    const callback = await browser.get(callbackUrl.href);
    expect(callback.status).toBe(302);
    const context = (await (await browser.get(`${serviceUrl}/api/context`)).json()) as LaunchContext;
    expect(context).toMatchObject({ patient: 'patient-7', fhirUser: 'Practitioner/dr-no' });
    expect(context.encounter).toBeUndefined();
    expect(context.needPatientBanner).toBe(true);
  });
});

describe('SMART launch variants', () => {
  it('works as a confidential client with private_key_jwt, the key published at the JWKS URL', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'smart-launch-'));
    const signingKey = await loadSigningKey({ alg: 'ES384', dataDir });
    const confidential = await startService({
      clientId: 'confidential-review-app',
      config: { clientAuthentication: 'private_key_jwt' },
      signingKey,
      jwks: publicJwks([signingKey]),
      registerJwks: true,
    });
    try {
      const browser = new Browser();
      const { callback } = await ehrLaunch(browser, 'patient-1', confidential.url);
      expect(callback.status, await callback.clone().text()).toBe(302);
      const exchange = authorizationServer.tokenRequests.at(-1)!;
      expect(exchange).toMatchObject({
        grantType: 'authorization_code',
        clientId: 'confidential-review-app',
      });
      expect(exchange.assertion?.header).toMatchObject({ alg: 'ES384', kid: signingKey.kid, typ: 'JWT' });
      expect(exchange.assertion?.payload).toMatchObject({
        iss: 'confidential-review-app',
        sub: 'confidential-review-app',
        aud: authorizationServer.tokenUrl,
      });
      expect((await browser.get(`${confidential.url}/api/context`)).status).toBe(200);
    } finally {
      await confidential.close();
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('uses a plain Lax cookie in the documented local-development setting', async () => {
    const local = await startService({
      clientId: 'local-review-app',
      config: { cookie: { secure: 'false', sameSite: 'lax' } },
    });
    try {
      const browser = new Browser();
      const { callback } = await ehrLaunch(browser, 'patient-1', local.url);
      expect(callback.status).toBe(302);
      for (const cookie of browser.setCookieHeaders) {
        expect(cookie).toMatch(/^ehr-draft-session=/);
        expect(cookie).toContain('SameSite=Lax');
        expect(cookie).not.toContain('Secure');
        expect(cookie).not.toContain('Partitioned');
      }
      expect(() =>
        smartLaunchConfigSchema.parse({
          clientId: 'x',
          allowedIssuers: ['https://fhir.example.org'],
          cookie: { secure: false },
        }),
      ).toThrow(/requires secure cookies/);
    } finally {
      await local.close();
    }
  });

  it("drops the context once the user's access token has expired", async () => {
    let clock = Date.now();
    const timed = await startService({ clientId: 'timed-review-app', now: () => clock });
    try {
      const browser = new Browser();
      await ehrLaunch(browser, 'patient-1', timed.url);
      expect((await browser.get(`${timed.url}/api/context`)).status).toBe(200);
      clock += (authorizationServer.misbehave.accessTokenLifetimeSeconds + 1) * 1000;
      expect((await browser.get(`${timed.url}/api/context`)).status).toBe(401);
    } finally {
      await timed.close();
    }
  });

  it('renews an expiring user token with the refresh token (online_access), once for concurrent calls', async () => {
    let clock = Date.now();
    const refreshing = await startService({
      clientId: 'refreshing-review-app',
      config: { scopes: `launch openid fhirUser online_access ${launchScopes.join(' ')}` },
      now: () => clock,
    });
    try {
      const browser = new Browser();
      await ehrLaunch(browser, 'patient-1', refreshing.url);
      const first = (await (await browser.get(`${refreshing.url}/api/context`)).json()) as LaunchContext;
      const refreshCount = () =>
        authorizationServer.tokenRequests.filter(
          (request) => request.grantType === 'refresh_token' && request.outcome === 'issued',
        ).length;
      const before = refreshCount();
      clock += (authorizationServer.misbehave.accessTokenLifetimeSeconds - 30) * 1000;
      const responses = await Promise.all(
        Array.from({ length: 5 }, () => browser.get(`${refreshing.url}/api/context`)),
      );
      const renewed = (await Promise.all(responses.map((response) => response.json()))) as (LaunchContext & {
        tokenWorks: boolean;
      })[];
      expect(refreshCount() - before).toBe(1);
      for (const context of renewed) {
        expect(context).toMatchObject({ patient: 'patient-1', tokenWorks: true, csrfToken: first.csrfToken });
        expect(context.expiresAt).toBeGreaterThan(first.expiresAt);
      }
      // The refresh token never reaches the browser.
      expect(JSON.stringify(renewed)).not.toMatch(/refresh/i);

      authorizationServer.revokeAllRefreshTokens();
      clock += authorizationServer.misbehave.accessTokenLifetimeSeconds * 1000;
      expect((await browser.get(`${refreshing.url}/api/context`)).status).toBe(401);
    } finally {
      await refreshing.close();
    }
  });

  it('keeps sessions in SQLite across a restart when configured', async () => {
    const dataDir = await mkdtemp(path.join(tmpdir(), 'smart-sessions-'));
    try {
      const first = await startService({
        clientId: 'durable-review-app',
        config: { sessionStore: 'sqlite' },
        dataDir,
      });
      const browser = new Browser();
      await ehrLaunch(browser, 'patient-4', first.url);
      expect((await browser.get(`${first.url}/api/context`)).status).toBe(200);
      await first.close();
      const file = path.join(dataDir, 'smart-sessions.sqlite');
      expect((await stat(file)).mode & 0o777).toBe(0o600);

      const second = await startService({
        clientId: 'durable-review-app',
        config: { sessionStore: 'sqlite' },
        dataDir,
      });
      try {
        const context = (await (await browser.get(`${second.url}/api/context`)).json()) as LaunchContext;
        expect(context.patient).toBe('patient-4');
      } finally {
        await second.close();
      }
    } finally {
      await rm(dataDir, { recursive: true, force: true });
    }
  });

  it('reuses a discovered smart-configuration between launches when caching is on', async () => {
    const cached = await startService({
      clientId: 'cached-review-app',
      config: { discoveryCacheSeconds: 300 },
    });
    try {
      discoveryRequests.length = 0;
      for (let launch = 0; launch < 3; launch += 1) {
        expect((await ehrLaunch(new Browser(), 'patient-1', cached.url)).callback.status).toBe(302);
      }
      const discoveries = discoveryRequests.filter((url) => url.endsWith('/.well-known/smart-configuration'));
      expect(discoveries).toHaveLength(1);
    } finally {
      await cached.close();
    }
  });

  it('shows a browser a readable error page and a program an OperationOutcome', async () => {
    const url = `${serviceUrl}/smart/launch?iss=${encodeURIComponent('https://attacker.example/<b>')}&launch=x`;
    const page = await fetch(url, { headers: { accept: 'text/html,application/xhtml+xml,*/*;q=0.8' } });
    expect(page.status).toBe(403);
    expect(page.headers.get('content-type')).toMatch(/^text\/html/);
    const html = await page.text();
    expect(html).toContain('role="alert"');
    expect(html).toContain('&#60;b&#62;');
    expect(html).not.toContain('<b>');
    const json = await fetch(url, { headers: { accept: 'application/fhir+json' } });
    expect(json.headers.get('content-type')).toMatch(/^application\/fhir\+json/);
  });

  it('treats a state naming an Object property as unknown', async () => {
    const browser = new Browser();
    const launch = authorizationServer.createLaunch({ patient: 'patient-1' });
    await startLaunch(
      browser,
      `?iss=${encodeURIComponent(authorizationServer.fhirBaseUrl)}&launch=${launch}`,
    );
    for (const state of ['__proto__', 'constructor', 'toString']) {
      const response = await browser.get(`${serviceUrl}/smart/callback?state=${state}&code=x`);
      expect(response.status).toBe(401);
      expect(await outcomeText(response)).toMatch(/state parameter does not match/);
    }
  });

  it('reads allowed issuers and scopes from environment-style strings', () => {
    const config = smartLaunchConfigSchema.parse({
      clientId: 'x',
      allowedIssuers: 'https://a.example/fhir, https://b.example/fhir',
      scopes: 'launch openid fhirUser patient/*.rs',
    });
    expect(config.allowedIssuers).toEqual(['https://a.example/fhir', 'https://b.example/fhir']);
    expect(config.scopes).toEqual(['launch', 'openid', 'fhirUser', 'patient/*.rs']);
    expect(config.cookie).toEqual({ secure: true, sameSite: 'none', partitioned: true });
    expect(config.reviewPath).toBe('/review');
  });
});
