import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { afterAll, describe, expect, it } from 'vitest';
import { createCdsHooksRouter } from '../../src/http/cds-hooks.ts';
import { silentLogger } from '../../src/log.ts';
import { type CdsCard, overrideReasonSystem } from '../../src/rules/cds-cards.ts';
import { InMemoryNudgeStore, type NudgeStore } from '../../src/rules/nudge-store.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { SqliteNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { minimalRule, ruleFolder, starterRulesDirectory, starterSource } from './helpers.ts';

/** Issue 13.12: cards that act (CDS Hooks suggestions with proposed resources) and a "not now" that holds. */
const servers: { close(): void }[] = [];
afterAll(() => {
  for (const server of servers) server.close();
});

async function serve(
  ruleSet: RuleSet,
  store: NudgeStore = new InMemoryNudgeStore(),
  clock = { now: new Date('2026-03-01T10:00:00Z') },
) {
  const app = express();
  app.use(
    createCdsHooksRouter({
      ruleSet: () => ruleSet,
      store,
      reviewAppUrl: 'https://review.example.org/launch',
      timeBudgetMs: 5_000,
      logger: silentLogger(),
      now: () => clock.now,
    }),
  );
  const server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  servers.push(server);
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const post = async (url: string, body: unknown) =>
    fetch(`${base}${url}`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify(body),
    });
  return { post, clock };
}

function prefetchOf(resources: FhirResource[]): Record<string, unknown> {
  const search = (type: string): Bundle => ({
    resourceType: 'Bundle',
    type: 'searchset',
    entry: resources.filter((resource) => resource.resourceType === type).map((resource) => ({ resource })),
  });
  return {
    patient: resources.find((resource) => resource.resourceType === 'Patient'),
    conditions: search('Condition'),
    medications: search('MedicationRequest'),
    allergies: search('AllergyIntolerance'),
    observations: search('Observation'),
    encounters: search('Encounter'),
    procedures: search('Procedure'),
    immunizations: search('Immunization'),
  };
}

function fixture(name: string): FhirResource[] {
  const bundle = JSON.parse(
    readFileSync(path.join(starterRulesDirectory, 'fixtures', `${name}.json`), 'utf8'),
  ) as Bundle;
  return (bundle.entry ?? []).map((entry) => entry.resource as FhirResource);
}

async function cardsFor(
  post: Awaited<ReturnType<typeof serve>>['post'],
  patientId: string,
  resources: FhirResource[],
) {
  const response = await post('/cds-services/guideline-nudges-patient-view', {
    hook: 'patient-view',
    hookInstance: 'd1577c69-dfbe-44ad-ba6d-3e05e953b2ea',
    context: { userId: 'Practitioner/1', patientId },
    prefetch: prefetchOf(resources),
  });
  expect(response.status).toBe(200);
  return ((await response.json()) as { cards: CdsCard[] }).cards;
}

describe('12: actionable cards', () => {
  it('offers the proposed resources as CDS Hooks suggestions, for this patient, as proposals', async () => {
    const loaded = await loadRuleSet(starterSource());
    if (!loaded.ok) throw new Error('starter rules do not load');
    const { post } = await serve(loaded.ruleSet);

    const statin = (await cardsFor(post, 'dm-no-statin', fixture('dm-no-statin'))).find((card) =>
      card.summary.startsWith('Diabetes, age'),
    );
    expect(statin?.selectionBehavior).toBe('at-most-one');
    expect(statin?.suggestions).toHaveLength(1);
    const [suggestion] = statin?.suggestions ?? [];
    expect(suggestion.uuid).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-5[0-9a-f]{3}-a[0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(suggestion.actions).toEqual([
      {
        type: 'create',
        description: 'Propose atorvastatin 20 mg daily',
        resource: expect.objectContaining({
          resourceType: 'MedicationRequest',
          status: 'draft',
          intent: 'proposal',
          subject: { reference: 'Patient/dm-no-statin' },
          medicationCodeableConcept: expect.objectContaining({ text: 'atorvastatin 20 mg oral tablet' }),
          authoredOn: '2026-03-01T10:00:00.000Z',
        }),
      },
    ]);

    const colorectal = (await cardsFor(post, 'crc-due', fixture('crc-due'))).find((card) =>
      card.summary.startsWith('Colorectal'),
    );
    expect(colorectal?.suggestions?.map((entry) => [entry.label, entry.isRecommended])).toEqual([
      ['Order a fecal immunochemical test (FIT)', true],
      ['Refer for colonoscopy', undefined],
    ]);
    expect(colorectal?.suggestions?.[0].actions[0].resource).toMatchObject({
      resourceType: 'ServiceRequest',
      intent: 'proposal',
      subject: { reference: 'Patient/crc-due' },
      code: { coding: [{ system: 'http://loinc.org', code: '29771-3' }] },
    });
    expect(new Set(colorectal?.suggestions?.map((entry) => entry.uuid)).size).toBe(2);

    const influenza = (await cardsFor(post, 'flu-due', fixture('flu-due'))).find((card) =>
      card.summary.startsWith('Influenza'),
    );
    expect(influenza?.suggestions?.[0].actions[0].resource).toMatchObject({
      resourceType: 'ImmunizationRecommendation',
      patient: { reference: 'Patient/flu-due' },
      date: '2026-03-01T10:00:00.000Z',
      recommendation: [{ forecastStatus: { coding: [{ code: 'due' }] } }],
    });
  });

  it('refuses a suggestion that proposes nothing actionable, names an unknown value, or is not a request', async () => {
    const withSuggestion = (suggestion: string) =>
      loadRuleSet(ruleFolder({ 'minimal.yaml': `${minimalRule}suggestions:\n${suggestion}` }));
    const noCode = await withSuggestion(
      '  - label: Order it\n    resource: { resourceType: ServiceRequest }\n',
    );
    expect(!noCode.ok && noCode.errors[0]).toMatchObject({
      line: 18,
      message: 'suggestion 1: a ServiceRequest needs a code (what to order)',
    });
    const unknownValue = await withSuggestion(
      '  - label: "Order {{test-name}}"\n    resource: { resourceType: ServiceRequest, code: { text: x } }\n',
    );
    expect(!unknownValue.ok && unknownValue.errors[0].message).toMatch(
      /^suggestion 1 uses \{\{test-name\}\}, which is not a declared value/,
    );
    const notARequest = await withSuggestion(
      '  - label: Record it\n    resource: { resourceType: Procedure, code: { text: x } }\n',
    );
    expect(notARequest.ok).toBe(false);
  });
});

describe('12: "not now" overrides', () => {
  it('holds a rule back for the patient for the days the clinician chose, then shows it again', async () => {
    // A rule with no suppression window of its own: only the clinician's snooze can hold it back.
    const loaded = await loadRuleSet(
      ruleFolder({
        'minimal.yaml':
          minimalRule.replace('trigger: [encounter-planned]', 'trigger: [patient-view]') +
          'suppression:\n  days: 0\n',
      }),
    );
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const store = new SqliteNudgeStore(':memory:');
    const { post, clock } = await serve(loaded.ruleSet, store);
    const patient: FhirResource[] = [{ resourceType: 'Patient', id: 'p-snooze', birthDate: '1960-01-01' }];

    const [card] = await cardsFor(post, 'p-snooze', patient);
    expect(card?.overrideReasons).toContainEqual({
      system: overrideReasonSystem,
      code: 'snooze-30d',
      display: 'Not now: remind me in 30 days',
    });
    const feedback = await post('/cds-services/guideline-nudges-patient-view/feedback', {
      feedback: [
        {
          card: card.uuid,
          outcome: 'overridden',
          overrideReason: { reason: { system: overrideReasonSystem, code: 'snooze-30d' } },
          outcomeTimestamp: '2026-03-01T10:01:00Z',
        },
      ],
    });
    expect(feedback.status).toBe(200);

    clock.now = new Date('2026-03-15T10:00:00Z');
    expect(await cardsFor(post, 'p-snooze', patient)).toEqual([]);
    // Other patients are not held back by this patient's snooze.
    expect(
      await cardsFor(post, 'p-other', [{ resourceType: 'Patient', id: 'p-other', birthDate: '1960-01-01' }]),
    ).toHaveLength(1);
    clock.now = new Date('2026-04-01T10:00:00Z');
    expect(await cardsFor(post, 'p-snooze', patient)).toHaveLength(1);
    await store.close();
  });
});
