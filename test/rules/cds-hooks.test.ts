import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { type CdsHooksOptions, createCdsHooksRouter } from '../../src/http/cds-hooks.ts';
import { silentLogger } from '../../src/log.ts';
import type { CdsCard } from '../../src/rules/cds-cards.ts';
import { evaluateRules, type Nudge } from '../../src/rules/evaluate.ts';
import { InMemoryNudgeStore } from '../../src/rules/nudge-store.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { starterRulesDirectory, starterSource } from './helpers.ts';

let ruleSet: RuleSet;
const now = new Date('2026-03-01T10:00:00Z');
const reviewAppUrl = 'https://review.example.org/launch';

beforeAll(async () => {
  const result = await loadRuleSet(starterSource());
  if (!result.ok) throw new Error('starter rules do not load');
  ruleSet = result.ruleSet;
});

function fixtureBundle(name: string): Bundle {
  return JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', `${name}.json`), 'utf8'));
}

/** The prefetch an EHR would send for the discovery templates, from a fixture bundle. */
function prefetchFrom(bundle: Bundle, withEncounter: boolean): Record<string, unknown> {
  const resources = (bundle.entry ?? []).map((entry) => entry.resource as FhirResource);
  const search = (type: string): Bundle => ({
    resourceType: 'Bundle',
    type: 'searchset',
    entry: resources.filter((resource) => resource.resourceType === type).map((resource) => ({ resource })),
  });
  const prefetch: Record<string, unknown> = {
    patient: resources.find((resource) => resource.resourceType === 'Patient'),
    conditions: search('Condition'),
    medications: search('MedicationRequest'),
    allergies: search('AllergyIntolerance'),
    observations: search('Observation'),
    encounters: search('Encounter'),
    procedures: search('Procedure'),
    immunizations: search('Immunization'),
  };
  if (withEncounter) prefetch.encounter = resources.find((resource) => resource.resourceType === 'Encounter');
  return prefetch;
}

async function serve(overrides: Partial<CdsHooksOptions> = {}) {
  const store = overrides.store ?? new InMemoryNudgeStore();
  const app = express();
  app.use(
    createCdsHooksRouter({
      ruleSet: () => ruleSet,
      store,
      reviewAppUrl,
      timeBudgetMs: 5_000,
      logger: silentLogger(),
      now: () => now,
      ...overrides,
    }),
  );
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  servers.push(server);
  const post = (url: string, body: unknown) =>
    fetch(`${base}${url}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  return { base, store, post };
}

const servers: ReturnType<ReturnType<typeof express>['listen']>[] = [];
afterAll(() => {
  for (const server of servers) server.close();
});

const hookRequest = (hook: string, patientId: string, extra: Record<string, unknown> = {}) => ({
  hook,
  hookInstance: 'd1577c69-dfbe-44ad-ba6d-3e05e953b2ea',
  context: { userId: 'Practitioner/1', patientId, ...((extra.context as object) ?? {}) },
  ...Object.fromEntries(Object.entries(extra).filter(([key]) => key !== 'context')),
});

describe('CDS Hooks', () => {
  it('discovers patient-view and encounter-start services with prefetch templates', async () => {
    const { base } = await serve();
    const response = await fetch(`${base}/cds-services`);
    expect(response.status).toBe(200);
    expect(response.headers.get('access-control-allow-origin')).toBe('*');
    const body = (await response.json()) as {
      services: { hook: string; id: string; prefetch: Record<string, string> }[];
    };
    expect(body.services.map((service) => service.hook).sort()).toEqual(['encounter-start', 'patient-view']);
    const encounterStart = body.services.find((service) => service.hook === 'encounter-start');
    expect(encounterStart?.prefetch.encounter).toBe('Encounter/{{context.encounterId}}');
    expect(encounterStart?.prefetch.observations).toBe('Observation?patient={{context.patientId}}');
  });

  it('answers from the prefetch alone with cards of the CDS Hooks 2.0 shape, urgency first', async () => {
    let fetched = 0;
    const { post } = await serve({
      fetchPatientRecord: async () => {
        fetched += 1;
        throw new Error('must not be called when the prefetch is complete');
      },
    });
    const bundle = fixtureBundle('bp-severe');
    const response = await post(
      '/cds-services/guideline-nudges-encounter-start',
      hookRequest('encounter-start', 'bp-severe', {
        context: { encounterId: 'bp-severe-visit' },
        prefetch: prefetchFrom(bundle, true),
      }),
    );
    expect(response.status).toBe(200);
    const { cards } = (await response.json()) as { cards: CdsCard[] };
    expect(fetched).toBe(0);
    expect(cards.length).toBeGreaterThanOrEqual(2);
    expect(cards[0]).toMatchObject({
      indicator: 'critical',
      summary: expect.stringMatching(/^Visit urgency: urgent/),
    });
    const severe = cards.find((card) => card.summary.startsWith('Severe BP'));
    expect(severe).toBeDefined();
    for (const card of cards) {
      expect(card.summary.length).toBeLessThan(140);
      expect(['info', 'warning', 'critical']).toContain(card.indicator);
      expect(card.source.label.length).toBeGreaterThan(0);
      expect(card.source.url).toMatch(/^https?:\/\//);
      expect(card.uuid).toMatch(/^[0-9a-f-]{36}$/);
      expect(card.links?.[0]).toMatchObject({ type: 'smart', url: reviewAppUrl });
      expect(typeof card.detail).toBe('string');
    }
    expect(severe?.indicator).toBe('critical');
    expect(severe?.source.url).toBe('https://www.ahajournals.org/doi/10.1161/HYP.0000000000000065');
    expect(severe?.detail).toContain('**Suggested action:**');
    expect(severe?.detail).toContain('`Observation/bp-severe-bp1`');
    expect(severe?.detail).toContain('**Visit urgency:** urgent');
    expect(JSON.parse(severe?.links?.[0].appContext ?? '{}')).toMatchObject({
      patientId: 'bp-severe',
      encounterId: 'bp-severe-visit',
    });
    expect(severe?.overrideReasons?.length).toBeGreaterThan(0);
  });

  it('fetches the record through the injected function when the prefetch is missing', async () => {
    const requests: { patientId: string; fhirServer?: string }[] = [];
    const { post } = await serve({
      fetchPatientRecord: async (request) => {
        requests.push({ patientId: request.patientId, fhirServer: request.fhirServer });
        return recordFromBundle(fixtureBundle('opioid-benzo'));
      },
    });
    const response = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('patient-view', 'opioid-benzo', { fhirServer: 'https://ehr.example.org/fhir' }),
    );
    const { cards } = (await response.json()) as { cards: { summary: string; indicator: string }[] };
    expect(requests).toEqual([{ patientId: 'opioid-benzo', fhirServer: 'https://ehr.example.org/fhir' }]);
    expect(cards[0]).toMatchObject({
      indicator: 'critical',
      summary: expect.stringContaining('Opioid and benzodiazepine'),
    });
  });

  it('serves drafted nudges when the pipeline has them, without evaluating', async () => {
    const record = recordFromBundle(fixtureBundle('raas-unmonitored'));
    const drafted = await evaluateRules(ruleSet, record, {
      trigger: 'encounter-planned',
      now,
      ruleIds: ['raas-inhibitor-monitoring'],
    });
    const queries: unknown[] = [];
    const { post } = await serve({
      findDraftedNudges: async (query) => {
        queries.push(query);
        return { nudges: drafted.nudges };
      },
      fetchPatientRecord: async () => {
        throw new Error('must not evaluate live');
      },
    });
    const response = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('patient-view', 'raas-unmonitored'),
    );
    const { cards } = (await response.json()) as { cards: { uuid: string }[] };
    expect(queries).toEqual([{ patientId: 'raas-unmonitored', encounterId: undefined }]);
    expect(cards.map((card) => card.uuid)).toEqual(drafted.nudges.map((nudge: Nudge) => nudge.id));
  });

  it('answers with no cards when live evaluation exceeds the time budget', async () => {
    let aborted = false;
    const { post } = await serve({
      timeBudgetMs: 100,
      fetchPatientRecord: (request) =>
        new Promise<PatientRecord>((_resolve, reject) => {
          request.signal.addEventListener('abort', () => {
            aborted = true;
            reject(new Error('aborted'));
          });
        }),
    });
    const started = Date.now();
    const response = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('patient-view', 'slow-patient'),
    );
    expect(response.status).toBe(200);
    expect(await response.json()).toEqual({ cards: [] });
    expect(aborted).toBe(true);
    expect(Date.now() - started).toBeLessThan(4_000);
  });

  it('records feedback (accepted, overridden with a reason) against the delivered nudge', async () => {
    const { post, store } = await serve();
    const response = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('patient-view', 'dm-a1c-overdue', {
        prefetch: prefetchFrom(fixtureBundle('dm-a1c-overdue'), false),
      }),
    );
    const { cards } = (await response.json()) as { cards: { uuid: string; summary: string }[] };
    const hba1c = cards.find((card) => card.summary.startsWith('HbA1c overdue'));
    const statin = cards.find((card) => card.summary.startsWith('Diabetes, age'));
    expect(hba1c && statin).toBeTruthy();
    const feedback = await post('/cds-services/guideline-nudges-patient-view/feedback', {
      feedback: [
        {
          card: hba1c?.uuid,
          outcome: 'accepted',
          acceptedSuggestions: [],
          outcomeTimestamp: '2026-03-01T10:05:00Z',
        },
        {
          card: statin?.uuid,
          outcome: 'overridden',
          overrideReason: {
            reason: { code: 'patient-declined', display: 'Patient declined' },
            userComment: 'wants to try diet first',
          },
          outcomeTimestamp: '2026-03-01T10:06:00Z',
        },
      ],
    });
    expect(feedback.status).toBe(200);
    const statistics = await store.statistics();
    expect(statistics.find((row) => row.ruleId === 'diabetes-hba1c-overdue')).toMatchObject({
      fired: 1,
      accepted: 1,
    });
    expect(statistics.find((row) => row.ruleId === 'diabetes-statin')).toMatchObject({
      fired: 1,
      overridden: 1,
      overrideReasons: { 'Patient declined: wants to try diet first': 1 },
    });
  });

  it('refuses bad requests with OperationOutcomes', async () => {
    const { post } = await serve();
    const unknown = await post('/cds-services/no-such-service', hookRequest('patient-view', 'x'));
    expect(unknown.status).toBe(404);
    expect(await unknown.json()).toMatchObject({
      resourceType: 'OperationOutcome',
      issue: [{ code: 'not-found' }],
    });
    const invalid = await post('/cds-services/guideline-nudges-patient-view', { hook: 'patient-view' });
    expect(invalid.status).toBe(400);
    expect(await invalid.json()).toMatchObject({
      resourceType: 'OperationOutcome',
      issue: [{ code: 'invalid' }],
    });
    const wrongHook = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('encounter-start', 'x'),
    );
    expect(wrongHook.status).toBe(400);
    const badFeedback = await post('/cds-services/guideline-nudges-patient-view/feedback', {
      feedback: [{ card: 'x', outcome: 'maybe' }],
    });
    expect(badFeedback.status).toBe(400);
  });

  it('rejects unauthenticated calls when a verifier is configured', async () => {
    const { post } = await serve({ authenticate: async (authorization) => authorization === 'Bearer good' });
    const response = await post(
      '/cds-services/guideline-nudges-patient-view',
      hookRequest('patient-view', 'x'),
    );
    expect(response.status).toBe(401);
  });
});
