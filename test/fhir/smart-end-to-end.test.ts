import { mkdtemp, rm } from 'node:fs/promises';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import type { Encounter } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { retrievedVersions } from '../../fhir/patient-record.ts';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema, defaultBackendScopes } from '../../src/config/auth-config.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * The whole FHIR path as a hospital would run it: the strict SMART authorization server (assertion
 * claims and signature checked against the JWKS, scopes enforced per request) in front of the sandbox
 * EHR, the service's SMART Backend Services token, history retrieval and a draft write-back.
 */
const clientId = 'ehr-draft-agent';
// What the draft writer needs beyond the default grant: Device (its author) and Provenance search (idempotency).
const scopes = `${defaultBackendScopes} system/Device.crs system/Provenance.rs`;

let sandbox: SandboxEhr;
let sandboxServer: Server;
let authorizationServer: SmartAuthorizationServer;
let dataDir: string;
let encounter: Encounter;

beforeAll(async () => {
  sandbox = createSandboxEhr();
  const patients = generatePatients({ count: 2, seed: 11 });
  await sandbox.seed(patients.flatMap((patient) => patient.resources));
  const app = express();
  app.use('/fhir', sandboxRouter(sandbox));
  sandboxServer = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const { port } = sandboxServer.address() as AddressInfo;
  authorizationServer = await startSmartAuthorizationServer({
    fhirUpstream: `http://127.0.0.1:${port}/fhir`,
    enforceScopes: true,
  });
  // Paging links and Locations must name the origin the client talks to (the authorising proxy).
  sandbox.setBaseUrl(authorizationServer.fhirBaseUrl);
  dataDir = await mkdtemp(path.join(tmpdir(), 'smart-e2e-'));
  const firstPatient = patients[0].resources;
  encounter = firstPatient.find(
    (resource): resource is Encounter =>
      resource.resourceType === 'Encounter' && resource.status === 'finished',
  ) as Encounter;
});

afterAll(async () => {
  await authorizationServer?.close();
  sandboxServer?.closeAllConnections();
  await new Promise<void>((resolve) => sandboxServer?.close(() => resolve()));
  await sandbox?.close();
  await rm(dataDir, { recursive: true, force: true });
});

describe('SMART Backend Services end to end', () => {
  it('retrieves and writes back with one token, and recovers from a revoked token with exactly one more', async () => {
    const config = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId, scopes });
    const provider = await createAccessTokenProvider(config, {
      fhirBaseUrl: authorizationServer.fhirBaseUrl,
      dataDir,
    });
    authorizationServer.registerClient({ clientId, jwks: provider.jwks, allowedScopes: scopes.split(' ') });
    const client = new FhirClient({ baseUrl: authorizationServer.fhirBaseUrl, accessToken: provider });

    const reread = await client.read<Encounter>('Encounter', encounter.id as string);
    const record = await retrievePatientRecord(client, reread, {
      draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
    });
    expect(record.patient.id).toBe('sbx-0000');
    expect(record.notes.length).toBeGreaterThan(0);
    const versions = retrievedVersions(record);
    const cited = [...versions.keys()].filter((reference) => reference.startsWith('Condition/')).slice(0, 2);
    const writer = new DraftNoteWriter(client, 'urn:ehr-draft-agent:draft');
    const written = await writer.write(
      {
        kind: 'progress-summary',
        title: 'AI draft progress summary',
        text: cited.map((reference) => `- condition [${reference}]`).join('\n'),
        engine: { id: 'extractive', version: '1' },
        sources: new Map(cited.map((reference) => [reference, versions.get(reference)])),
        verification: { cited: cited.length, removed: 0, flagged: false },
      },
      record.patient,
      reread,
    );
    expect(written.created).toBe(true);
    const tokenRequests = () =>
      authorizationServer.tokenRequests.filter((request) => request.grantType === 'client_credentials');
    expect(tokenRequests()).toHaveLength(1);
    expect(tokenRequests()[0].outcome).toBe('issued');
    expect(authorizationServer.fhirRequests.every((request) => request.status < 400)).toBe(true);

    authorizationServer.revokeAllAccessTokens();
    const again = await client.read('DocumentReference', written.draft.id as string);
    expect(again.id).toBe(written.draft.id);
    expect(tokenRequests()).toHaveLength(2);
    expect(authorizationServer.fhirRequests.filter((request) => request.status === 401)).toHaveLength(1);
  });
});
