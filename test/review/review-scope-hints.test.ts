import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import express, { type RequestHandler } from 'express';
import type { DocumentReference, Encounter, Patient } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { createDraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { likelyMissingScopes } from '../../fhir/operation-outcome.ts';
import { defaultLaunchScopes } from '../../src/config/auth-config.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { draftsApiRouter, launchScopeContext, userFhirClient } from '../../src/http/drafts-api-routes.ts';
import type { LaunchContext } from '../../src/http/smart-launch.ts';
import { createLogger } from '../../src/log.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';

/**
 * The review app acts with the clinician's token, so a 403 names the scopes of that token (`patient/` or
 * `user/`), never the service's `system/` ones: an operator asked to widen the service's grant would change
 * nothing for the clinician. The clinician still sees one plain sentence; the log says which scope.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function tempStore(): SqliteDraftStore {
  const directory = mkdtempSync(path.join(tmpdir(), 'review-scope-hints-'));
  const store = new SqliteDraftStore(path.join(directory, 'drafts.sqlite'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  cleanups.push(() => store.close());
  return store;
}

/** A stand-in EHR holding one preliminary draft, refusing every Provenance the clinician writes. */
async function ehrRefusingProvenance(): Promise<{ server: FhirStandIn; draft: DocumentReference }> {
  const server = await startFhirStandIn({
    refuseWrite: (resource) =>
      resource.resourceType === 'Provenance' &&
      !(resource.meta as { profile?: string[] } | undefined)?.profile
        ? { status: 403, diagnostics: 'Forbidden' }
        : undefined,
  });
  cleanups.push(() => server.close());
  seedEncounters(server, 1);
  const writer = new DraftNoteWriter(new FhirClient({ baseUrl: server.url }), identifierSystem);
  const { draft } = await writer.write(
    {
      kind: 'progress-summary',
      title: 'AI draft progress summary',
      text: '## Progress summary\n- Diabetes [Condition/stand-in-condition]\n',
      engine: { id: 'extractive', version: '1' },
      sources: new Map([['Condition/stand-in-condition', '1']]),
      verification: { cited: 1, removed: 0, flagged: false },
    },
    server.get('Patient', 'stand-in-patient') as unknown as Patient,
    server.get('Encounter', 'enc-0') as unknown as Encounter,
  );
  return { server, draft };
}

function launch(server: FhirStandIn, scopes: string[]): LaunchContext {
  return {
    launchId: 'launch-1',
    fhirBaseUrl: server.url,
    patient: 'stand-in-patient',
    encounter: 'enc-0',
    fhirUser: 'Practitioner/dr-a',
    accessToken: 'clinician-token',
    expiresAt: Date.now() + 3_600_000,
    scopes,
    csrfToken: 'csrf-1',
  };
}

const provenance = (target: string) => ({
  resourceType: 'Provenance' as const,
  target: [{ reference: target }],
  recorded: '2026-01-01T00:00:00Z',
  agent: [{ who: { reference: 'Practitioner/dr-a' } }],
});

describe('the review app’s FHIR client names the clinician’s scopes in a 403', () => {
  it('patient/ for a launch holding patient scopes, user/ for one holding only user scopes', async () => {
    const { server, draft } = await ehrRefusingProvenance();
    const target = `DocumentReference/${draft.id}`;

    const patientLaunch = launch(server, defaultLaunchScopes.split(' '));
    expect(launchScopeContext(patientLaunch)).toBe('patient');
    const refused = await userFhirClient(patientLaunch)
      .create(provenance(target))
      .catch((error) => error);
    expect(refused.status).toBe(403);
    expect(refused.message).toBe(
      '403 on create Provenance: Forbidden; the token probably lacks patient/Provenance.c (or .crus)',
    );

    const userLaunch = launch(server, [
      'openid',
      'fhirUser',
      'user/Provenance.c',
      'user/DocumentReference.crus',
    ]);
    expect(launchScopeContext(userLaunch)).toBe('user');
    const userRefused = await userFhirClient(userLaunch)
      .create(provenance(target))
      .catch((error) => error);
    expect(userRefused.message).toContain('the token probably lacks user/Provenance.c');
    expect(userRefused.message).not.toContain('system/');
  });

  it('through the drafts API: the clinician reads one sentence, the log names the request and the patient/ scope', async () => {
    const { server, draft } = await ehrRefusingProvenance();
    const context = launch(server, defaultLaunchScopes.split(' '));
    const lines: string[] = [];
    const logger = createLogger({
      level: 'info',
      destination: new Writable({
        write(chunk, _encoding, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    });
    const lifecycle = createDraftLifecycle({
      mode: 'write',
      identifierSystem,
      store: tempStore(),
      requestRegeneration: () => undefined,
    });
    const requireLaunchContext = (): RequestHandler => (_request, response, next) => {
      response.locals.launchContext = context;
      next();
    };
    const app = express();
    app.use(
      '/api/drafts',
      draftsApiRouter({
        requireLaunchContext,
        lifecycleFor: (launchContext) => lifecycle.withClient(userFhirClient(launchContext)),
        logger,
      }),
    );
    const listening: Server = await new Promise((resolve) => {
      const started = app.listen(0, '127.0.0.1', () => resolve(started));
    });
    cleanups.push(() => new Promise<void>((resolve) => listening.close(() => resolve())));
    const base = `http://127.0.0.1:${(listening.address() as AddressInfo).port}`;

    const response = await fetch(`${base}/api/drafts/${draft.id}`, {
      method: 'PATCH',
      headers: { 'content-type': 'application/json', 'x-csrf-token': context.csrfToken },
      body: JSON.stringify({ text: '## Progress summary\n- Edited [Condition/stand-in-condition]\n' }),
    });
    expect(response.status).toBe(401);
    const body = await response.json();
    expect(body.issue[0].diagnostics).toContain('open the app again');

    const logged = lines
      .map((line) => JSON.parse(line))
      .find((line) => line.msg === 'ehr-refused-user-token');
    expect(logged).toMatchObject({
      status: 403,
      requests: ['create Provenance'],
      missingScopes: 'the token probably lacks patient/Provenance.c (or .crus)',
    });
    expect(lines.join('\n')).not.toContain('system/');
    expect(lines.join('\n')).not.toContain('Edited');
  });
});

describe('the hint for a profiled write under a patient launch', () => {
  it('names StructureDefinition as a user/ scope, since it belongs to no patient', () => {
    const hint = likelyMissingScopes(
      [{ interaction: 'create', resourceType: 'Provenance', declaresProfile: true }],
      'patient',
    );
    expect(hint).toContain('patient/Provenance.c');
    expect(hint).toContain('user/StructureDefinition.rs');
    expect(hint).not.toContain('patient/StructureDefinition');
  });
});
