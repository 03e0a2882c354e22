import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Encounter } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema } from '../../src/config/auth-config.ts';
import type { RunningService } from '../../src/service.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from './service-harness.ts';

/**
 * The default run takes the hospital's path: with no FHIR_BASE_URL the service registers itself with the
 * sandbox's SMART authorization server (its JWKS URL, its generated key) and works through Backend Services
 * tokens, and the review app is a registered launch client of the sandbox. Tokens are required here
 * (sandbox.auth.required), so nothing succeeds on the loopback administrator's pass.
 */
let service: RunningService;
let reader: FhirClient;
let dataDir: string;

beforeAll(async () => {
  ({ service } = await startSandboxService({ EHR_AGENT_SANDBOX__AUTH__REQUIRED: 'true' }));
  // A second Backend Services client for the test's own reads, registered like any other.
  dataDir = await mkdtemp(path.join(tmpdir(), 'sandbox-default-reader-'));
  const readerToken = await createAccessTokenProvider(
    backendAuthConfigSchema.parse({
      mode: 'smart-backend',
      clientId: 'test-reader',
      scopes: 'system/DocumentReference.rs system/Encounter.rs',
    }),
    { fhirBaseUrl: service.fhirBaseUrl, dataDir },
  );
  service.sandbox!.authorization!.registerClient({
    clientId: 'test-reader',
    jwks: { keys: readerToken.jwks!.keys as Record<string, unknown>[] },
    scopes: ['system/DocumentReference.rs', 'system/Encounter.rs'],
  });
  reader = new FhirClient({ baseUrl: service.fhirBaseUrl, accessToken: readerToken });
}, 120_000);

afterAll(async () => {
  await service?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('the default run against the sandbox’s authorization server', () => {
  it('serves the service’s JWKS and the sandbox’s SMART configuration', async () => {
    const jwks = await (await fetch(`${service.url}/.well-known/jwks.json`)).json();
    expect(jwks.keys).toHaveLength(1);
    expect(jwks.keys[0]).toMatchObject({ alg: 'ES384', kty: 'EC' });
    expect(jwks.keys[0].d).toBeUndefined();
    const configuration = await (
      await fetch(`${service.fhirBaseUrl}/.well-known/smart-configuration`)
    ).json();
    expect(configuration.token_endpoint).toBe(`${service.url}/sandbox/auth/token`);
  });

  it('refuses requests without a token when tokens are required', async () => {
    expect((await fetch(`${service.fhirBaseUrl}/Patient`)).status).toBe(401);
  });

  it('drafts an encounter with its Backend Services token: subscription, retrieval and write-back', async () => {
    const encounter: Encounter = finishedEncounter('sbx-0001', 'smart-default-visit-1');
    await service.sandbox!.seed([encounter]);
    const response = await postNotification(
      service,
      idOnlyNotification(service.fhirBaseUrl, encounter.id!, 1),
    );
    expect(response.status).toBe(200);
    await waitForIdleQueue(service);
    const drafts = await draftsFor(reader, encounter.id!);
    expect(drafts).toHaveLength(1);
    expect(drafts[0].docStatus).toBe('preliminary');
  });

  it('has the review app registered: a standalone launch reaches the review page as the sandbox clinician', async () => {
    const cookies = new Map<string, string>();
    let url = `${service.url}/smart/launch`;
    let review: URL | undefined;
    for (let hop = 0; hop < 10 && !review; hop++) {
      const response = await fetch(url, {
        redirect: 'manual',
        headers: { cookie: [...cookies].map(([name, value]) => `${name}=${value}`).join('; ') },
      });
      for (const cookie of response.headers.getSetCookie()) {
        const [pair] = cookie.split(';');
        const separator = pair.indexOf('=');
        cookies.set(pair.slice(0, separator).trim(), pair.slice(separator + 1));
      }
      const location = response.headers.get('location');
      if (!location)
        throw new Error(`the launch stopped at HTTP ${response.status}: ${await response.text()}`);
      url = new URL(location, url).href;
      if (new URL(url).pathname === '/review') review = new URL(url);
    }
    expect(review?.searchParams.get('context')).toBeTruthy();
    // Plain http on loopback: the session cookie is neither Secure nor __Host-.
    expect([...cookies.keys()]).toContain('ehr-draft-session');
    const session = await fetch(`${service.url}/api/drafts/session`, {
      headers: {
        cookie: `ehr-draft-session=${cookies.get('ehr-draft-session')}`,
        'x-launch-context': review!.searchParams.get('context')!,
      },
    });
    expect(session.status).toBe(200);
    expect(JSON.stringify(await session.json())).toContain('Practitioner/sbx-clinician');
  });
});
