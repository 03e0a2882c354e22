import { spawn } from 'node:child_process';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import type { Encounter, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirAuthenticationHealth } from '../../fhir/authentication-health.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema, defaultBackendScopes } from '../../src/config/auth-config.ts';
import type { ServiceConfig } from '../../src/config/config-schema.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { silentLogger } from '../../src/log.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { StartupError } from '../../src/startup-error.ts';
import { type AuthorizedSandbox, startAuthorizedSandbox } from '../sandbox/authorized-sandbox.ts';
import { notifySecret, testConfig } from '../support/intake-harness.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * What the first real deployments found about refused tokens (issue 12, items 2 and 7): a token endpoint that
 * refuses the client, or grants less than the service needs, stops start-up with one line naming the endpoint and
 * the cause; an unavailable one is waited for while /readyz says why; a FHIR server that stops accepting the
 * service's token makes /readyz not ready and the jobs wait with backoff instead of being dead-lettered.
 */
const repositoryRoot = path.resolve(import.meta.dirname, '../..');
const scopesWithoutImmunization = defaultBackendScopes
  .split(' ')
  .filter((scope) => scope !== 'system/Immunization.rs');

let hospital: AuthorizedSandbox;
let hospitalTokenUrl: string;
const temporaryDirectories: string[] = [];

async function temporaryDirectory(): Promise<string> {
  const directory = await mkdtemp(path.join(tmpdir(), 'token-failures-'));
  temporaryDirectories.push(directory);
  return directory;
}

async function freePort(): Promise<number> {
  const probe = createServer();
  await new Promise<void>((resolve) => probe.listen(0, '127.0.0.1', resolve));
  const { port } = probe.address() as AddressInfo;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  return port;
}

async function readyz(url: string): Promise<{ status: number; body: Record<string, unknown> }> {
  // The details are for operators: the admin secret, which defaults to the notify secret against a real EHR.
  const response = await fetch(`${url}/readyz`, { headers: { authorization: `Bearer ${notifySecret}` } });
  return { status: response.status, body: (await response.json()) as Record<string, unknown> };
}

async function waitFor<T>(what: string, check: () => Promise<T | undefined>, timeoutMs = 20_000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const value = await check().catch(() => undefined);
    if (value !== undefined) return value;
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  throw new Error(`timed out waiting for ${what}`);
}

function smartBackend(clientId: string): Partial<ServiceConfig> {
  return {
    auth: { backend: backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId }) },
  } as Partial<ServiceConfig>;
}

beforeAll(async () => {
  // The sandbox EHR behind its own strict authorization server, every request needing a token.
  hospital = await startAuthorizedSandbox({ auth: { required: true } });
  const discovery = await fetch(`${hospital.fhirBaseUrl}/.well-known/smart-configuration`);
  hospitalTokenUrl = ((await discovery.json()) as { token_endpoint: string }).token_endpoint;
}, 120_000);

afterAll(async () => {
  await hospital?.close();
  for (const directory of temporaryDirectories) await rm(directory, { recursive: true, force: true });
});

describe('a token endpoint that refuses the service stops start-up', () => {
  it('an unknown client id: StartupError naming the token endpoint and invalid_client', async () => {
    const dataDir = await temporaryDirectory();
    const config = testConfig(hospital.fhirBaseUrl, dataDir, smartBackend('nobody-registered-this-client'));
    const failure = await startService(config, silentLogger()).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(StartupError);
    const message = (failure as StartupError).message;
    expect(message).toContain(hospitalTokenUrl);
    expect(message).toContain('invalid_client');
    expect(message).toContain('nobody-registered-this-client');
    expect(message).not.toMatch(/\n/);
  });

  it('a registered client granted fewer scopes: StartupError naming the missing scope', async () => {
    const dataDir = await temporaryDirectory();
    // The key the service generates into its data directory at first start, registered as an administrator would.
    const provider = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'narrow-client' }),
      { fhirBaseUrl: hospital.fhirBaseUrl, dataDir },
    );
    hospital.authorization.registerClient({
      clientId: 'narrow-client',
      jwks: provider.jwks as { keys: Record<string, unknown>[] },
      scopes: scopesWithoutImmunization,
    });
    const config = testConfig(hospital.fhirBaseUrl, dataDir, smartBackend('narrow-client'));
    const failure = await startService(config, silentLogger()).then(
      () => undefined,
      (error: unknown) => error,
    );
    expect(failure).toBeInstanceOf(StartupError);
    const message = (failure as StartupError).message;
    expect(message).toContain(hospitalTokenUrl);
    expect(message).toMatch(/missing system\/Immunization\.rs \(granted:/);
    expect(message).not.toMatch(/\n/);
  });

  it('`node src/main.ts` with an unknown client prints one line on stderr, no stack, and exits non-zero', async () => {
    const dataDir = await temporaryDirectory();
    const child = spawn(process.execPath, [path.join(repositoryRoot, 'src/main.ts')], {
      cwd: dataDir,
      env: {
        PATH: process.env.PATH,
        HOME: dataDir,
        PORT: '0',
        DATA_DIR: dataDir,
        LOG_LEVEL: 'silent',
        FHIR_BASE_URL: hospital.fhirBaseUrl,
        NOTIFY_SECRET: notifySecret,
        EHR_AGENT_AUTH__BACKEND__MODE: 'smart-backend',
        EHR_AGENT_AUTH__BACKEND__CLIENT_ID: 'nobody-registered-this-client',
        EHR_AGENT_INTAKE__SUBSCRIPTION__ENSURE_ON_START: 'false',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stderr = '';
    child.stdout.resume();
    child.stderr.on('data', (chunk: Buffer) => {
      stderr += chunk.toString('utf8');
    });
    const exitCode = await new Promise<number | null>((resolve) => child.on('exit', resolve));
    const lines = stderr.split('\n').filter((line) => line.trim() !== '');
    expect(exitCode).not.toBe(0);
    expect(exitCode).not.toBeNull();
    expect(lines).toHaveLength(1);
    expect(lines[0]).toContain(hospitalTokenUrl);
    expect(lines[0]).toContain('invalid_client');
    expect(stderr).not.toMatch(/^\s+at /m);
  }, 60_000);
});

describe('an unavailable token endpoint is waited for', () => {
  let gate: SmartAuthorizationServer;

  beforeAll(async () => {
    gate = await startSmartAuthorizationServer();
  });
  afterAll(async () => {
    await gate?.close();
  });

  it('503, 503, then a token: start-up waits, /readyz says why meanwhile, then the service is ready', async () => {
    const dataDir = await temporaryDirectory();
    const port = await freePort();
    const url = `http://127.0.0.1:${port}`;
    // The gate reads the service's JWKS over HTTP on every token request, as Medplum and the launcher do.
    gate.registerClient({
      clientId: 'waiting-client',
      jwksUrl: `${url}/.well-known/jwks.json`,
      allowedScopes: defaultBackendScopes.split(' '),
    });
    gate.misbehave.tokenEndpointUnavailable = 2;
    const config = testConfig(gate.fhirBaseUrl, dataDir, {
      ...smartBackend('waiting-client'),
      port,
      host: '127.0.0.1',
    } as Partial<ServiceConfig>);
    let service: RunningService | undefined;
    const starting = startService(config, silentLogger()).then((started) => {
      service = started;
      return started;
    });
    try {
      const waiting = await waitFor('/readyz naming the unavailable token endpoint', async () => {
        const answer = await readyz(url);
        return answer.status === 503 && typeof answer.body.reason === 'string' ? answer : undefined;
      });
      expect(waiting.body.reason).toMatch(/^token-endpoint-unavailable: token endpoint .* is unavailable/);
      expect(waiting.body.reason).toContain(gate.tokenUrl);
      expect(service).toBeUndefined();

      await starting;
      const outcomes = gate.tokenRequests.map((request) => request.outcome);
      expect(outcomes).toEqual(['refused', 'refused', 'issued']);
      expect(gate.tokenRequests[0].error).toMatch(/^temporarily_unavailable/);
      const ready = await readyz(url);
      expect(ready.status).toBe(200);
      expect(ready.body.reason).toBeUndefined();
    } finally {
      await (await starting.catch(() => undefined))?.close();
    }
  }, 60_000);
});

describe('a FHIR server that stops accepting the service token', () => {
  let sandbox: SandboxEhr;
  let front: Server;
  let frontBaseUrl: string;
  let encounter: Encounter;
  // The site's gateway in front of the EHR: takes one static token, or (after it expired) nothing.
  let accepting = true;
  const refusals: string[] = [];

  beforeAll(async () => {
    sandbox = createSandboxEhr();
    const patients = generatePatients({ count: 1, seed: 12 });
    await sandbox.seed(patients.flatMap((patient) => patient.resources));
    encounter = patients[0].resources.find(
      (resource): resource is Encounter =>
        resource.resourceType === 'Encounter' && resource.status === 'finished',
    ) as Encounter;
    const app = express();
    app.use('/fhir', (request, response, next) => {
      if (!accepting || request.headers.authorization !== 'Bearer site-static-token') {
        refusals.push(`${request.method} ${request.path}`);
        response.status(401).type('application/fhir+json').set('www-authenticate', 'Bearer');
        response.send({
          resourceType: 'OperationOutcome',
          issue: [{ severity: 'error', code: 'login', diagnostics: 'token expired' }],
        });
        return;
      }
      // Past the gateway the EHR sees a trusted caller, as behind a site's API gateway.
      delete request.headers.authorization;
      next();
    });
    app.use('/fhir', sandboxRouter(sandbox));
    front = await new Promise<Server>((resolve) => {
      const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
    });
    frontBaseUrl = `http://127.0.0.1:${(front.address() as AddressInfo).port}/fhir`;
    sandbox.setBaseUrl(frontBaseUrl);
  });

  afterAll(async () => {
    front?.closeAllConnections();
    await new Promise<void>((resolve) => (front ? front.close(() => resolve()) : resolve()));
    await sandbox?.close();
  });

  it('static token refused: the job is retried, /readyz turns 503 with the reason, and recovers', async () => {
    const dataDir = await temporaryDirectory();
    const config = testConfig(frontBaseUrl, dataDir, {
      auth: { backend: backendAuthConfigSchema.parse({ mode: 'static', token: 'site-static-token' }) },
      queue: { maxAttempts: 20, backoffBaseMs: 50, backoffMaxMs: 200 },
    } as Partial<ServiceConfig>);
    const service = await startService(config, silentLogger());
    try {
      expect((await readyz(service.url)).status).toBe(200);
      accepting = false;
      await service.queue.enqueue([{ encounterId: encounter.id as string, source: 'test' }]);

      const notReady = await waitFor('/readyz 503 for failing authentication', async () => {
        const answer = await readyz(service.url);
        return answer.status === 503 ? answer : undefined;
      });
      expect(notReady.body.reason).toBe(`fhir-authentication-failing: ${frontBaseUrl}, last status 401`);
      // Waiting, not dead-lettered: the 401 is retried with backoff.
      expect(await service.queue.list('failed', 10)).toEqual([]);
      expect((await service.queue.counts()).pending + (await service.queue.counts()).running).toBe(1);

      accepting = true;
      const [done] = await waitFor('the job to succeed once the token is accepted', async () => {
        const jobs = await service.queue.list('done', 10);
        return jobs.length > 0 ? jobs : undefined;
      });
      expect(done.attempts).toBeGreaterThan(1);
      // A static token cannot be refreshed: each failed attempt asked once, not twice with the same token.
      expect(refusals).toHaveLength(done.attempts - 1);
      expect(refusals.every((refusal) => refusal === `GET /Encounter/${encounter.id}`)).toBe(true);
      const ready = await readyz(service.url);
      expect(ready.status).toBe(200);
      expect(ready.body.reason).toBeUndefined();
    } finally {
      accepting = true;
      await service.close();
    }
  }, 60_000);
});

describe('smart-backend: a 401 to the service token', () => {
  let gate: SmartAuthorizationServer;
  let sandbox: SandboxEhr;
  let sandboxServer: Server;

  beforeAll(async () => {
    sandbox = createSandboxEhr();
    await sandbox.seed([{ resourceType: 'Patient', id: 'p1', gender: 'female' }]);
    const app = express();
    app.use('/fhir', sandboxRouter(sandbox));
    sandboxServer = await new Promise<Server>((resolve) => {
      const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
    });
    gate = await startSmartAuthorizationServer({
      fhirUpstream: `http://127.0.0.1:${(sandboxServer.address() as AddressInfo).port}/fhir`,
      enforceScopes: true,
    });
    sandbox.setBaseUrl(gate.fhirBaseUrl);
  });

  afterAll(async () => {
    await gate?.close();
    sandboxServer?.closeAllConnections();
    await new Promise<void>((resolve) => (sandboxServer ? sandboxServer.close(() => resolve()) : resolve()));
    await sandbox?.close();
  });

  it('triggers exactly one new token and one retry; a 401 to the fresh token makes readiness fail at once', async () => {
    const dataDir = await temporaryDirectory();
    const provider = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'ehr-draft-agent' }),
      { fhirBaseUrl: gate.fhirBaseUrl, dataDir },
    );
    gate.registerClient({
      clientId: 'ehr-draft-agent',
      jwks: provider.jwks,
      allowedScopes: defaultBackendScopes.split(' '),
    });
    const health = new FhirAuthenticationHealth({ endpoint: gate.fhirBaseUrl });
    const client = new FhirClient({
      baseUrl: gate.fhirBaseUrl,
      accessToken: health.watch(provider),
      onAuthentication: health.observe,
      sleep: async () => {},
    });
    const tokens = () => gate.tokenRequests.filter((request) => request.grantType === 'client_credentials');
    const patientReads = () => gate.fhirRequests.filter((request) => request.path === '/fhir/Patient/p1');

    expect((await client.read<Patient>('Patient', 'p1')).gender).toBe('female');
    expect(tokens()).toHaveLength(1);

    // Revoked once: one new token, one retry, and the service is still healthy.
    gate.revokeAllAccessTokens();
    expect((await client.read<Patient>('Patient', 'p1')).id).toBe('p1');
    expect(tokens()).toHaveLength(2);
    expect(patientReads().map((request) => request.status)).toEqual([200, 401, 200]);
    expect(health.problem).toBeUndefined();

    // The server now refuses every token it issues: one 401, one new token, one 401, and the verdict is given.
    gate.misbehave.accessTokenExpired = true;
    gate.revokeAllAccessTokens();
    const refused = await client.read('Patient', 'p1').catch((error: unknown) => error);
    expect((refused as { status?: number }).status).toBe(401);
    expect(tokens()).toHaveLength(3);
    expect(patientReads().map((request) => request.status)).toEqual([200, 401, 200, 401, 401]);
    expect(health.problem).toBe(`fhir-authentication-failing: ${gate.fhirBaseUrl}, last status 401`);

    gate.misbehave.accessTokenExpired = false;
    expect((await client.read<Patient>('Patient', 'p1')).id).toBe('p1');
    expect(health.problem).toBeUndefined();
  });
});
