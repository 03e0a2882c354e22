import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema } from '../../src/config/auth-config.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/** The test authorization server in front of a FHIR server: bearer checked, then the request forwarded as is. */
let upstream: Server;
const upstreamSeen: { method: string; url: string; body: string; authorization: string | undefined }[] = [];
let authorizationServer: SmartAuthorizationServer;
let dataDir: string;

beforeAll(async () => {
  upstream = createServer(async (request, response) => {
    const chunks: Buffer[] = [];
    for await (const chunk of request) chunks.push(chunk as Buffer);
    upstreamSeen.push({
      method: request.method ?? '',
      url: request.url ?? '',
      body: Buffer.concat(chunks).toString('utf8'),
      authorization: request.headers.authorization,
    });
    response.writeHead(request.method === 'POST' ? 201 : 200, {
      'content-type': 'application/fhir+json',
      location: '/Patient/p1/_history/1',
    });
    response.end(JSON.stringify({ resourceType: 'Patient', id: 'p1', name: [{ text: 'Zoë' }] }));
  });
  await new Promise<void>((resolve) => upstream.listen(0, '127.0.0.1', resolve));
  authorizationServer = await startSmartAuthorizationServer({
    fhirUpstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/base`,
  });
  dataDir = await mkdtemp(path.join(tmpdir(), 'smart-proxy-'));
});

afterAll(async () => {
  await authorizationServer.close();
  await new Promise((resolve) => upstream.close(resolve));
  await rm(dataDir, { recursive: true, force: true });
});

describe('the test authorization server in front of a FHIR server', () => {
  it('forwards authorised requests with their body and refuses the rest before they reach the server', async () => {
    const config = backendAuthConfigSchema.parse({
      mode: 'smart-backend',
      clientId: 'svc',
      scopes: 'system/Patient.crs',
    });
    const provider = await createAccessTokenProvider(config, {
      fhirBaseUrl: authorizationServer.fhirBaseUrl,
      dataDir,
    });
    authorizationServer.registerClient({
      clientId: 'svc',
      jwks: provider.jwks,
      allowedScopes: ['system/Patient.crs'],
    });

    const refused = await fetch(`${authorizationServer.fhirBaseUrl}/Patient/p1`);
    expect(refused.status).toBe(401);
    expect(upstreamSeen).toHaveLength(0);

    const token = await provider.getToken();
    const read = await fetch(`${authorizationServer.fhirBaseUrl}/Patient/p1?_elements=id`, {
      headers: { authorization: `Bearer ${token}` },
    });
    expect(read.status).toBe(200);
    expect(((await read.json()) as { name: { text: string }[] }).name[0].text).toBe('Zoë');

    const created = await fetch(`${authorizationServer.fhirBaseUrl}/Patient`, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${token}`,
        'content-type': 'application/fhir+json',
        'if-none-exist': 'identifier=x|1',
      },
      body: JSON.stringify({ resourceType: 'Patient', name: [{ text: 'Zoë' }] }),
    });
    expect(created.status).toBe(201);
    expect(created.headers.get('location')).toBe('/Patient/p1/_history/1');
    expect(upstreamSeen.map(({ method, url }) => `${method} ${url}`)).toEqual([
      'GET /base/Patient/p1?_elements=id',
      'POST /base/Patient',
    ]);
    expect(JSON.parse(upstreamSeen[1].body).name[0].text).toBe('Zoë');
    // The bearer token is for the gate; the upstream never receives it.
    expect(upstreamSeen.every((seen) => seen.authorization === undefined)).toBe(true);
    expect(authorizationServer.fhirRequests.map((request) => request.status)).toEqual([401, 200, 201]);
  });
});

describe('the test authorization server as a strict FHIR gate', () => {
  it('refuses what the scopes do not allow, entry by entry in a batch, and tokens it issued already expired', async () => {
    const gate = await startSmartAuthorizationServer({
      fhirUpstream: `http://127.0.0.1:${(upstream.address() as AddressInfo).port}/base`,
      enforceScopes: true,
    });
    try {
      const scopes = 'system/Patient.rs system/DocumentReference.cu system/Encounter.read';
      const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'svc', scopes });
      const provider = await createAccessTokenProvider(config, { fhirBaseUrl: gate.fhirBaseUrl, dataDir });
      gate.registerClient({ clientId: 'svc', jwks: provider.jwks, allowedScopes: scopes.split(' ') });
      const token = await provider.getToken();
      const call = async (method: string, relative: string, body?: unknown) => {
        const response = await fetch(`${gate.fhirBaseUrl}${relative}`, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/fhir+json' },
          body: body === undefined ? undefined : JSON.stringify(body),
        });
        await response.body?.cancel();
        return response.status;
      };
      expect(await call('GET', '/Patient/p1')).toBe(200);
      expect(await call('GET', '/Patient?identifier=x')).toBe(200);
      expect(await call('GET', '/Encounter/e1')).toBe(200);
      expect(await call('POST', '/DocumentReference', { resourceType: 'DocumentReference' })).toBe(201);
      expect(await call('PUT', '/DocumentReference/d1', { resourceType: 'DocumentReference' })).toBe(200);
      expect(await call('GET', '/DocumentReference/d1')).toBe(403);
      expect(await call('GET', '/Observation?patient=Patient/p1')).toBe(403);
      expect(await call('DELETE', '/Patient/p1')).toBe(403);
      const batch = (urls: string[]) => ({
        resourceType: 'Bundle',
        type: 'batch',
        entry: urls.map((url) => ({ request: { method: 'GET', url } })),
      });
      expect(await call('POST', '/', batch(['Patient/p1', 'Encounter?patient=Patient/p1']))).toBe(201);
      expect(await call('POST', '/', batch(['Patient/p1', 'Observation?patient=Patient/p1']))).toBe(403);

      gate.misbehave.accessTokenExpired = true;
      provider.invalidate();
      expect(await readWith(gate, await provider.getToken())).toBe(401);
    } finally {
      await gate.close();
    }
  });
});

async function readWith(server: SmartAuthorizationServer, token: string | undefined): Promise<number> {
  const response = await fetch(`${server.fhirBaseUrl}/Patient/p1`, {
    headers: { authorization: `Bearer ${token}` },
  });
  await response.body?.cancel();
  return response.status;
}
