import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import type { FhirResource } from 'fhir/r4.js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import { OperationOutcomeError, outcome, outcomeError } from '../../fhir/operation-outcome.ts';
import { type DraftView, draftsApiRouter, practitionerReference } from '../../src/http/drafts-api-routes.ts';
import type { LaunchContext } from '../../src/http/smart-launch.ts';
import { silentLogger } from '../../src/log.ts';
import { createMemoryDraftLifecycle } from './memory-draft-lifecycle.ts';

/**
 * The /api/drafts router on its own, behind a stand-in for the SMART launch middleware (same contract: 401
 * without a context, 403 without the CSRF token on changes). The real launch runs in the browser e2e suite.
 */
const contexts: Record<string, LaunchContext> = {
  alice: {
    launchId: 'alice-launch',
    fhirBaseUrl: 'http://127.0.0.1:1/fhir',
    patient: 'p1',
    encounter: 'e1',
    fhirUser: 'https://ehr.example/fhir/Practitioner/dr-a',
    accessToken: 'token-a',
    expiresAt: Date.now() + 3_600_000,
    scopes: [],
    csrfToken: 'csrf-alice',
  },
  nurse: {
    launchId: 'nurse-launch',
    fhirBaseUrl: 'http://127.0.0.1:1/fhir',
    patient: 'p1',
    encounter: undefined,
    fhirUser: 'RelatedPerson/r1',
    accessToken: 'token-n',
    expiresAt: Date.now() + 3_600_000,
    scopes: [],
    csrfToken: 'csrf-nurse',
  },
};

const requireLaunchContext = (): RequestHandler => (request, response, next) => {
  const context = contexts[request.get('x-test-session') ?? ''];
  if (!context) {
    response
      .status(401)
      .json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'login' }] });
    return;
  }
  if (request.method !== 'GET' && request.get('x-csrf-token') !== context.csrfToken) {
    response
      .status(403)
      .json({ resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'forbidden' }] });
    return;
  }
  response.locals.launchContext = context;
  next();
};

const draft = (id: string, patientId: string, extra: Partial<DraftView> = {}): DraftView => ({
  id,
  patientId,
  encounterId: 'e1',
  kind: 'progress-summary',
  status: 'preliminary',
  text: 'BP 150/95 [Observation/o1].',
  title: 'Progress summary',
  createdAt: '2026-11-27T10:00:00Z',
  citations: ['Observation/o1'],
  flagged: false,
  mode: 'write',
  ...extra,
});

const resources: Record<string, FhirResource> = {
  'Observation/o1': {
    resourceType: 'Observation',
    id: 'o1',
    status: 'final',
    code: { text: 'Blood pressure' },
    subject: { reference: 'Patient/p1' },
    valueQuantity: { value: 150, unit: 'mmHg' },
  },
  'Observation/other': {
    resourceType: 'Observation',
    id: 'other',
    status: 'final',
    code: { text: 'Glucose' },
    subject: { reference: 'Patient/p2' },
  },
  'Practitioner/dr-a': {
    resourceType: 'Practitioner',
    id: 'dr-a',
    name: [{ prefix: ['Dr.'], given: ['Dana'], family: 'Okafor' }],
  },
  'Practitioner/dr-b': { resourceType: 'Practitioner', id: 'dr-b', name: [{ text: 'Ben Ilunga' }] },
  'Patient/p1': { resourceType: 'Patient', id: 'p1', name: [{ given: ['Ada'], family: 'Test' }] },
  'Encounter/e1': {
    resourceType: 'Encounter',
    id: 'e1',
    status: 'finished',
    class: { code: 'AMB' },
    type: [
      { coding: [{ system: 'http://snomed.info/sct', code: '390906007', display: 'Follow-up encounter' }] },
    ],
    subject: { reference: 'Patient/p1' },
    period: { start: '2026-11-20T09:00:00Z', end: '2026-11-20T09:30:00Z' },
  },
  'Encounter/e-other': {
    resourceType: 'Encounter',
    id: 'e-other',
    status: 'finished',
    class: { code: 'EMER' },
    subject: { reference: 'Patient/p2' },
  },
};
/** When set, the EHR answers every read with this status, as it does for a revoked or expired user token. */
let ehrRefusal: number | undefined;
const refusedRead = (path: string) =>
  new OperationOutcomeError(outcome('exception', `GET ${path}: HTTP ${ehrRefusal}`), { status: ehrRefusal });

let server: Server;
let baseUrl: string;
let memory: ReturnType<typeof createMemoryDraftLifecycle>;
const tokensUsed: string[] = [];
const versionReads: string[] = [];

beforeAll(async () => {
  const app = express();
  app.use(
    '/api/drafts',
    draftsApiRouter({
      requireLaunchContext,
      lifecycleFor: () => memory.lifecycle,
      fhirClientFor: (context) => ({
        read: async (type: string, id: string) => {
          tokensUsed.push(context.accessToken);
          if (ehrRefusal) throw refusedRead(`${type}/${id}`);
          const resource = resources[`${type}/${id}`];
          if (!resource) throw outcomeError('not-found', 'gone', 404);
          return resource as never;
        },
        get: async (path: string) => {
          tokensUsed.push(context.accessToken);
          if (ehrRefusal) throw refusedRead(path);
          versionReads.push(path);
          const [type, id] = path.split('/');
          const resource = resources[`${type}/${id}`];
          if (!resource) throw outcomeError('not-found', 'gone', 404);
          return resource as never;
        },
      }),
      logger: silentLogger(),
    }),
  );
  server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/drafts`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

beforeEach(() => {
  ehrRefusal = undefined;
  memory = createMemoryDraftLifecycle([
    draft('d1', 'p1'),
    draft('d2', 'p2'),
    draft('d3', 'p1', { kind: 'nudges', status: 'final' }),
  ]);
});

function call(
  path: string,
  init: { method?: string; session?: string; csrf?: string; body?: unknown; type?: string } = {},
) {
  const headers: Record<string, string> = {};
  if (init.session) headers['x-test-session'] = init.session;
  if (init.csrf) headers['x-csrf-token'] = init.csrf;
  if (init.body !== undefined) headers['content-type'] = init.type ?? 'application/json';
  return fetch(`${baseUrl}${path}`, {
    method: init.method ?? 'GET',
    headers,
    body:
      init.body === undefined
        ? undefined
        : typeof init.body === 'string'
          ? init.body
          : JSON.stringify(init.body),
  });
}

const alice = { session: 'alice', csrf: 'csrf-alice' };

describe('/api/drafts', () => {
  it('answers 401 with an OperationOutcome without a session', async () => {
    const response = await call('');
    expect(response.status).toBe(401);
    expect((await response.json()).resourceType).toBe('OperationOutcome');
  });

  it('lists only the drafts of the patient in the token, uncached', async () => {
    const response = await call('', alice);
    expect(response.status).toBe(200);
    expect(response.headers.get('cache-control')).toBe('no-store');
    const { drafts } = await response.json();
    expect(drafts.map((entry: DraftView) => entry.id).sort()).toEqual(['d1', 'd3']);
    expect(memory.calls[0]).toEqual({ method: 'listDrafts', arguments: ['p1'] });
  });

  it('gives the page its CSRF token and the patient, never the access token', async () => {
    const response = await call('/session', alice);
    const body = await response.json();
    expect(body).toMatchObject({
      patient: 'p1',
      patientName: 'Ada Test',
      csrfToken: 'csrf-alice',
      canChange: true,
    });
    expect(JSON.stringify(body)).not.toContain('token-a');
  });

  it('refuses another patient’s draft with 403, for reads and changes', async () => {
    expect((await call('/d2', alice)).status).toBe(403);
    const sign = await call('/d2/sign', { ...alice, method: 'POST', body: {} });
    expect(sign.status).toBe(403);
    expect(memory.calls.some((entry) => entry.method === 'signDraft')).toBe(false);
    expect((await call('/nope', alice)).status).toBe(404);
  });

  it('needs the CSRF token and a JSON content type for changes', async () => {
    const noCsrf = await call('/d1', { session: 'alice', method: 'PATCH', body: { text: 'x' } });
    expect(noCsrf.status).toBe(403);
    const form = await call('/d1', {
      ...alice,
      method: 'PATCH',
      body: 'text=x',
      type: 'application/x-www-form-urlencoded',
    });
    expect(form.status).toBe(415);
    expect(memory.calls.some((entry) => entry.method === 'editDraft')).toBe(false);
  });

  it('validates bodies with zod: unknown fields, empty text and short reasons are 400', async () => {
    const extra = await call('/d1', { ...alice, method: 'PATCH', body: { text: 'ok', status: 'final' } });
    expect(extra.status).toBe(400);
    expect((await call('/d1', { ...alice, method: 'PATCH', body: { text: '   ' } })).status).toBe(400);
    expect((await call('/d1/reject', { ...alice, method: 'POST', body: { reason: 'x' } })).status).toBe(400);
    expect((await call('/d1', { ...alice, method: 'PATCH', body: '{not json' })).status).toBe(400);
  });

  it('edits, then signs as the practitioner from fhirUser', async () => {
    const edit = await call('/d1', { ...alice, method: 'PATCH', body: { text: 'Edited [Observation/o1].' } });
    expect(edit.status).toBe(200);
    expect((await edit.json()).draft.text).toBe('Edited [Observation/o1].');
    const sign = await call('/d1/sign', { ...alice, method: 'POST', body: {} });
    expect((await sign.json()).draft.status).toBe('final');
    expect(memory.calls.find((entry) => entry.method === 'editDraft')?.arguments).toEqual([
      'Edited [Observation/o1].',
      'Practitioner/dr-a',
    ]);
    // The signer's name, read with the clinician's own token, goes with the sign-off.
    expect(memory.calls.find((entry) => entry.method === 'signDraft')?.arguments).toEqual([
      { practitioner: 'Practitioner/dr-a', practitionerName: 'Dr. Dana Okafor' },
    ]);
    // A signed draft cannot be signed again: the lifecycle's conflict comes through as an OperationOutcome.
    const again = await call('/d1/sign', { ...alice, method: 'POST', body: {} });
    expect(again.status).toBe(409);
    expect((await again.json()).resourceType).toBe('OperationOutcome');
  });

  it('rejects with the reason and regenerates', async () => {
    const reject = await call('/d1/reject', {
      ...alice,
      method: 'POST',
      body: { reason: 'Wrong encounter' },
    });
    expect((await reject.json()).draft.status).toBe('entered-in-error');
    expect(memory.calls.find((entry) => entry.method === 'rejectDraft')?.arguments).toEqual([
      { practitioner: 'Practitioner/dr-a', reason: 'Wrong encounter' },
    ]);
    memory = createMemoryDraftLifecycle([draft('d1', 'p1')]);
    const regenerate = await call('/d1/regenerate', { ...alice, method: 'POST', body: {} });
    expect((await regenerate.json()).draft).toMatchObject({ id: 'd1', regenerationRequested: true });
  });

  it('refuses changes by a user who is not a practitioner', async () => {
    const response = await call('/d1/sign', {
      session: 'nurse',
      csrf: 'csrf-nurse',
      method: 'POST',
      body: {},
    });
    expect(response.status).toBe(403);
    expect((await call('/session', { session: 'nurse' }).then((r) => r.json())).canChange).toBe(false);
  });

  it('opens a citation of the patient in context with the user’s token, and refuses others with 403', async () => {
    const response = await call('/citations/Observation/o1', alice);
    expect(response.status).toBe(200);
    const view = await response.json();
    expect(view.reference).toBe('Observation/o1');
    expect(view.fields).toContainEqual({ label: 'Value', value: '150 mmHg' });
    expect(tokensUsed).toContain('token-a');
    expect((await call('/citations/Observation/other', alice)).status).toBe(403);
    expect((await call('/citations/Practitioner/dr-a', alice)).status).toBe(403);
    expect((await call('/citations/Observation/missing', alice)).status).toBe(404);
    expect((await call('/citations/observation/o1', alice)).status).toBe(400);
    // A versioned citation reads that version (vread), with the same patient check.
    const versioned = await call('/citations/Observation/o1/_history/3', alice);
    expect(versioned.status).toBe(200);
    expect(versionReads).toContain('Observation/o1/_history/3');
    expect((await call('/citations/Observation/other/_history/1', alice)).status).toBe(403);
  });

  it('names the patient, the launched visit and the signed-in clinician in words, ids kept beside them', async () => {
    const body = await (await call('/session', alice)).json();
    expect(body).toMatchObject({
      patient: 'p1',
      patientName: 'Ada Test',
      encounter: 'e1',
      encounterLabel: {
        type: 'Follow-up encounter',
        start: '2026-11-20T09:00:00Z',
        end: '2026-11-20T09:30:00Z',
      },
      userName: 'Dr. Dana Okafor',
      fhirUser: 'https://ehr.example/fhir/Practitioner/dr-a',
    });
  });

  it('gives each listed draft its visit type and date and its signer’s name instead of bare ids', async () => {
    memory = createMemoryDraftLifecycle([
      draft('d1', 'p1'),
      draft('d4', 'p1', { status: 'final', signedBy: 'Practitioner/dr-b' }),
      // Recorded with the draft at writing and sign-off: used as they are, not looked up again.
      draft('d5', 'p1', {
        encounterId: 'e9',
        encounterLabel: { type: 'Home visit', start: '2026-10-01' },
        status: 'final',
        signedBy: 'Practitioner/dr-c',
        signedByName: 'Cleo Marsh',
      }),
      // An encounter of another patient is never described, whatever a draft claims.
      draft('d6', 'p1', { encounterId: 'e-other' }),
    ]);
    const { drafts } = await (await call('', alice)).json();
    const byId = Object.fromEntries(drafts.map((entry: DraftView) => [entry.id, entry]));
    expect(byId.d1.encounterLabel).toEqual({
      type: 'Follow-up encounter',
      start: '2026-11-20T09:00:00Z',
      end: '2026-11-20T09:30:00Z',
    });
    expect(byId.d4).toMatchObject({ signedBy: 'Practitioner/dr-b', signedByName: 'Ben Ilunga' });
    expect(byId.d5).toMatchObject({
      encounterLabel: { type: 'Home visit', start: '2026-10-01' },
      signedByName: 'Cleo Marsh',
    });
    expect(byId.d6.encounterLabel).toBeUndefined();
    expect(versionReads).not.toContain('Practitioner/dr-c');
  });

  it('ends the session with a 401 when the EHR refuses the clinician’s token (401 or 403), on every call', async () => {
    for (const status of [401, 403]) {
      memory.refuseWith(status);
      ehrRefusal = status;
      for (const [path, init] of [
        ['', alice],
        ['/d1', alice],
        ['/d1/sign', { ...alice, method: 'POST', body: {} }],
        ['/d1/reject', { ...alice, method: 'POST', body: { reason: 'Wrong visit' } }],
      ] as const) {
        const response = await call(path, init);
        const body = await response.json();
        expect(response.status, `${status} ${path}`).toBe(401);
        expect(body.issue[0].code).toBe('login');
        // The page shows its own plain sentence; nothing of the FHIR request leaks into the answer.
        expect(JSON.stringify(body)).not.toMatch(/HTTP 40[13]|GET /);
      }
    }
    // The page's first call, and a citation, refused as unauthenticated end the session too. (A 403 on the
    // session's name reads only leaves names out: the scopes may not cover them.)
    ehrRefusal = 401;
    expect((await call('/session', alice)).status).toBe(401);
    expect((await call('/citations/Observation/o1', alice)).status).toBe(401);

    // The API's own refusals stay what they are: another patient's draft, a missing CSRF token.
    memory.refuseWith(undefined);
    ehrRefusal = undefined;
    expect((await call('/d2', alice)).status).toBe(403);
    expect((await call('/d1/sign', { session: 'alice', method: 'POST', body: {} })).status).toBe(403);
  });

  it('reads the practitioner from relative and absolute fhirUser values only', () => {
    expect(practitionerReference('Practitioner/123')).toBe('Practitioner/123');
    expect(practitionerReference('https://x/fhir/Practitioner/a-1')).toBe('Practitioner/a-1');
    expect(practitionerReference('Patient/1')).toBeUndefined();
    expect(practitionerReference(undefined)).toBeUndefined();
  });
});
