import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { DocumentReference, Observation, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { type AccessTokenProvider, createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema, defaultBackendScopes } from '../../src/config/auth-config.ts';
import { type RunningSandbox, startSandboxServer } from '../sandbox/sandbox-server.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * The service's FHIR client with its SMART Backend Services token, against the sandbox EHR behind the strict
 * authorization server (bearer and scopes checked on every request): what a hospital deployment looks like.
 */
let sandbox: RunningSandbox;
let gate: SmartAuthorizationServer;
let provider: AccessTokenProvider;
let client: FhirClient;
let dataDir: string;

const tokenRequests = () =>
  gate.tokenRequests.filter((request) => request.grantType === 'client_credentials');

beforeAll(async () => {
  sandbox = await startSandboxServer({ defaultPageSize: 2 });
  gate = await startSmartAuthorizationServer({ fhirUpstream: sandbox.baseUrl, enforceScopes: true });
  await sandbox.sandbox.seed([
    { resourceType: 'Patient', id: 'p1', gender: 'female' },
    ...[1, 2, 3].map(
      (index): Observation => ({
        resourceType: 'Observation',
        id: `o${index}`,
        status: 'final',
        code: { text: 'heart rate' },
        subject: { reference: 'Patient/p1' },
      }),
    ),
    { resourceType: 'Practitioner', id: 'dr1' },
  ]);
  dataDir = await mkdtemp(path.join(tmpdir(), 'smart-sandbox-'));
  provider = await createAccessTokenProvider(
    backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'ehr-draft-agent' }),
    { fhirBaseUrl: gate.fhirBaseUrl, dataDir },
  );
  gate.registerClient({
    clientId: 'ehr-draft-agent',
    jwks: provider.jwks,
    allowedScopes: defaultBackendScopes.split(' '),
  });
  client = new FhirClient({ baseUrl: gate.fhirBaseUrl, accessToken: provider, sleep: async () => {} });
}, 120_000);

afterAll(async () => {
  await gate?.close();
  await sandbox?.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('FHIR client with SMART Backend Services against the sandbox behind the authorization server', () => {
  it('reads and pages through the gate with one token', async () => {
    expect((await client.read<Patient>('Patient', 'p1')).gender).toBe('female');
    const observations = await client.search<Observation>('Observation', { patient: 'Patient/p1' });
    expect(observations.map((observation) => observation.id).sort()).toEqual(['o1', 'o2', 'o3']);
    // Two pages of Observation went through the gate, with the bearer checked each time.
    expect(
      gate.fhirRequests.filter((request) => request.path.includes('Observation')).length,
    ).toBeGreaterThanOrEqual(2);
    expect(tokenRequests()).toHaveLength(1);
  });

  it('writes what the default scopes allow (conditional create of a draft)', async () => {
    const draft: DocumentReference = {
      resourceType: 'DocumentReference',
      status: 'current',
      docStatus: 'preliminary',
      identifier: [{ system: 'urn:test', value: 'draft-1' }],
      subject: { reference: 'Patient/p1' },
      content: [{ attachment: { contentType: 'text/plain', data: Buffer.from('draft').toString('base64') } }],
    };
    const first = await client.create(draft, { ifNoneExist: 'identifier=urn:test|draft-1' });
    const again = await client.create(draft, { ifNoneExist: 'identifier=urn:test|draft-1' });
    expect(first.created).toBe(true);
    expect(again.created).toBe(false);
    expect(again.resource.id).toBe(first.resource.id);
  });

  it('after the server revokes the token, the client gets one new token and its request succeeds', async () => {
    const before = tokenRequests().length;
    gate.revokeAllAccessTokens();
    const reads = await Promise.all([1, 2, 3].map(() => client.read<Patient>('Patient', 'p1')));
    expect(reads.every((patient) => patient.id === 'p1')).toBe(true);
    expect(tokenRequests().length - before).toBe(1);
  });

  it('surfaces a read outside the granted scopes as a 403 OperationOutcome', async () => {
    const refused = await client.read('Practitioner', 'dr1').catch((error: unknown) => error);
    expect(refused).toBeInstanceOf(OperationOutcomeError);
    expect((refused as OperationOutcomeError).status).toBe(403);
    expect((refused as OperationOutcomeError).message).toMatch(/scopes do not allow r on Practitioner/);
  });
});
