import { readFileSync } from 'node:fs';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import type { Bundle, FhirResource, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { type CdsHooksOptions, createCdsHooksRouter } from '../../src/http/cds-hooks.ts';
import { silentLogger } from '../../src/log.ts';
import type { CdsCard } from '../../src/rules/cds-cards.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { InMemoryNudgeStore } from '../../src/rules/nudge-store.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { starterRulesDirectory, starterSource } from './helpers.ts';

/**
 * Deceased patients (issue 19, item 4) in CDS Hooks: patient-view and encounter-start answer with no
 * card for a patient who has died, whether the cards would come from the prefetch, from a record the
 * service reads, or from nudges a draft already holds. The same requests for the living patient do
 * show cards, so each case shows the death is what takes them away.
 */
let ruleSet: RuleSet;
const now = new Date('2026-03-01T10:00:00Z');
const servers: ReturnType<ReturnType<typeof express>['listen']>[] = [];

beforeAll(async () => {
  const result = await loadRuleSet(starterSource());
  if (!result.ok) throw new Error('starter rules do not load');
  ruleSet = result.ruleSet;
});
afterAll(() => {
  for (const server of servers) server.close();
});

/** A starter fixture whose rules fire (severe blood pressure: an urgency card and a critical nudge). */
function severeBloodPressure(): FhirResource[] {
  const bundle = JSON.parse(
    readFileSync(path.join(starterRulesDirectory, 'fixtures', 'bp-severe.json'), 'utf8'),
  ) as Bundle;
  return (bundle.entry ?? []).map((entry) => entry.resource as FhirResource);
}

function withDeath(resources: FhirResource[], death: Partial<Patient>): FhirResource[] {
  return resources.map((resource) =>
    resource.resourceType === 'Patient' ? { ...resource, ...death } : resource,
  );
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
    encounter: resources.find((resource) => resource.resourceType === 'Encounter'),
  };
}

function recordOf(resources: FhirResource[]): PatientRecord {
  return recordFromBundle({
    resourceType: 'Bundle',
    type: 'collection',
    entry: resources.map((resource) => ({ resource })),
  });
}

async function cardsFor(
  service: 'patient-view' | 'encounter-start',
  overrides: Partial<CdsHooksOptions>,
  prefetch?: Record<string, unknown>,
): Promise<CdsCard[]> {
  const app = express();
  app.use(
    createCdsHooksRouter({
      ruleSet: () => ruleSet,
      store: new InMemoryNudgeStore(),
      reviewAppUrl: 'https://review.example.org/launch',
      timeBudgetMs: 5_000,
      logger: silentLogger(),
      now: () => now,
      ...overrides,
    }),
  );
  const server = app.listen(0, '127.0.0.1');
  servers.push(server);
  await new Promise((resolve) => server.once('listening', resolve));
  const response = await fetch(
    `http://127.0.0.1:${(server.address() as AddressInfo).port}/cds-services/guideline-nudges-${service}`,
    {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        hook: service,
        hookInstance: 'd1577c69-dfbe-44ad-ba6d-3e05e953b2ea',
        context: {
          userId: 'Practitioner/1',
          patientId: 'bp-severe',
          ...(service === 'encounter-start' ? { encounterId: 'bp-severe-visit' } : {}),
        },
        ...(prefetch ? { prefetch } : {}),
      }),
    },
  );
  expect(response.status).toBe(200);
  return ((await response.json()) as { cards: CdsCard[] }).cards;
}

describe('CDS Hooks for a deceased patient', () => {
  it('answers encounter-start and patient-view from the prefetch with no card', async () => {
    const living = severeBloodPressure();
    expect((await cardsFor('encounter-start', {}, prefetchOf(living))).length).toBeGreaterThan(0);
    const died = withDeath(living, { deceasedDateTime: '2026-02-27T08:00:00Z' });
    expect(await cardsFor('encounter-start', {}, prefetchOf(died))).toEqual([]);
    expect(await cardsFor('patient-view', {}, prefetchOf(died))).toEqual([]);
    expect(
      await cardsFor('patient-view', {}, prefetchOf(withDeath(living, { deceasedBoolean: true }))),
    ).toEqual([]);
  });

  it('answers with no card when the record it reads shows the death', async () => {
    const living = severeBloodPressure();
    const fetchFrom = (resources: FhirResource[]) => ({
      fetchPatientRecord: async () => recordOf(resources),
    });
    expect((await cardsFor('patient-view', fetchFrom(living))).length).toBeGreaterThan(0);
    expect(await cardsFor('patient-view', fetchFrom(withDeath(living, { deceasedBoolean: true })))).toEqual(
      [],
    );
  });

  it('does not serve a draft’s nudges once the patient has died', async () => {
    const living = severeBloodPressure();
    const drafted = await evaluateRules(ruleSet, recordOf(living), { trigger: 'encounter-start', now });
    expect(drafted.nudges.length).toBeGreaterThan(0);
    const options = (patient: Patient): Partial<CdsHooksOptions> => ({
      findDraftedNudges: async () => ({ nudges: drafted.nudges }),
      readPatient: async () => patient,
      fetchPatientRecord: async () => {
        throw new Error('drafted nudges are served without evaluating');
      },
    });
    const patient = living.find((resource) => resource.resourceType === 'Patient') as Patient;
    expect((await cardsFor('patient-view', options(patient))).length).toBe(drafted.nudges.length);
    expect(await cardsFor('patient-view', options({ ...patient, deceasedDateTime: '2026-02-20' }))).toEqual(
      [],
    );
  });

  it('still serves a draft’s nudges when the patient cannot be read (the EHR screen must not break)', async () => {
    const drafted = await evaluateRules(ruleSet, recordOf(severeBloodPressure()), {
      trigger: 'encounter-start',
      now,
    });
    const cards = await cardsFor('patient-view', {
      findDraftedNudges: async () => ({ nudges: drafted.nudges }),
      readPatient: async () => {
        throw new Error('FHIR server unavailable');
      },
    });
    expect(cards.length).toBe(drafted.nudges.length);
  });
});
