import { validateResource } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type { AllergyIntolerance, Flag, QuestionnaireResponse } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { LinkSealer, sealInvitation } from '../../src/patient-intake/invitation-token.ts';
import type { RunningService } from '../../src/service.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import {
  answersFor,
  bookVisit,
  briefingCiting,
  invitationFor,
  linkOf,
  patientWithDiabetes,
  sandboxIntakeSecret,
  startIntakeService,
  waitFor,
  withFhirDefinitions,
} from './intake-support.ts';

/**
 * The patient's side end to end on the sandbox, in Chromium: a visit is booked, the invitation reaches the EHR
 * as a Communication within a minute, the patient follows its link, answers on plain forms (enableWhen
 * branching, no model), and the answers land in the EHR as a valid QuestionnaireResponse that the redrafted
 * briefing cites. Then the link is spent; forged and expired links get a plain page; an urgent answer shows the
 * site's instruction at once and flags the care team. axe-core on every page.
 */
describe.skipIf(!hasChromium)('pre-visit intake in the browser (model-free path)', () => {
  let service: RunningService;
  let fhir: FhirClient;
  let dataDir: string;
  let browser: Browser;
  let patientId: string;

  beforeAll(async () => {
    ({ service, fhir, dataDir } = await startIntakeService());
    browser = await launchChromium();
    patientId = await patientWithDiabetes(fhir);
    withFhirDefinitions();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await service?.close();
  });

  it('invites, interviews, writes a valid QuestionnaireResponse, and the briefing cites it', async () => {
    const bookedAt = Date.now();
    const visit = await bookVisit(fhir, patientId);
    const invitation = await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation');
    expect(Date.now() - bookedAt).toBeLessThan(60_000);
    expect(invitation).toMatchObject({
      status: 'preparation',
      subject: { reference: `Patient/${patientId}` },
      encounter: { reference: `Encounter/${visit.id}` },
    });
    const link = linkOf(invitation);
    expect(invitation.payload?.[0]?.contentString).toContain(link);
    // Nothing readable in the URL: neither the patient's id nor the visit's.
    expect(link).not.toContain(patientId);
    expect(link).not.toContain(visit.id as string);

    const allergies = await fhir.search<AllergyIntolerance>('AllergyIntolerance', {
      patient: `Patient/${patientId}`,
    });
    const allergiesBefore = allergies.length;
    const listedAllergy = allergies[0]?.code?.coding?.[0]?.display ?? 'none';
    const page = await browser.newPage();
    await page.goto(link);
    expect(await page.locator('html').getAttribute('lang')).toBe('en');
    expect(await page.locator('h1').textContent()).toBe('Before your visit');
    await expectNoSeriousViolations(page, 'first intake page');
    // Branching without script: the follow-ups of a yes are not on the first page.
    expect(await page.locator('#answer-pain-location').count()).toBe(0);

    await page.fill('#answer-concern', 'Pain in my left foot for two weeks');
    await page.check('#answer-onset-2');
    await page.check('#answer-severity-1');
    await page.check('#answer-pain-0');
    await page.check('#answer-takes-medicines-0');
    await page.check('#answer-has-allergies-0');
    await page.check('#answer-chest-pain-1');
    await page.check('#answer-short-of-breath-1');
    await page.check('#answer-self-harm-1');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);

    // The second page asks what the yes answers opened, and nothing the no answers closed.
    expect(await page.locator('#answer-pain-location').count()).toBe(1);
    expect(await page.locator('#answer-medicines').count()).toBe(1);
    expect(await page.locator('#answer-allergies').count()).toBe(1);
    await expectNoSeriousViolations(page, 'second intake page');
    await page.fill('#answer-pain-location', 'left foot, under the big toe');
    await page.fill('#answer-medicines', 'ibuprofen daily, metformin twice a day');
    await page.fill('#answer-allergies', `${listedAllergy}, bee stings`);
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    expect(await page.locator('h1').textContent()).toBe('Thank you');
    await expectNoSeriousViolations(page, 'intake done page');

    const response = (await answersFor(fhir, visit.id as string)) as QuestionnaireResponse;
    expect(response).toMatchObject({
      status: 'completed',
      subject: { reference: `Patient/${patientId}` },
      encounter: { reference: `Encounter/${visit.id}` },
      author: { reference: `Patient/${patientId}` },
      questionnaire: 'urn:ehr-draft-agent:questionnaire:pre-visit-intake|1.0.0',
    });
    expect(Date.parse(response.authored as string)).toBeGreaterThanOrEqual(bookedAt);
    const items = new Map(response.item?.map((item) => [item.linkId, item]));
    expect(items.get('concern')).toMatchObject({
      text: 'What is the main reason for your visit?',
      answer: [{ valueString: 'Pain in my left foot for two weeks' }],
    });
    expect(items.get('onset')?.answer?.[0]?.valueCoding?.code).toBe('weeks');
    expect(items.get('pain')?.answer).toEqual([{ valueBoolean: true }]);
    expect(items.get('medicines')?.answer).toEqual([
      { valueString: 'ibuprofen daily, metformin twice a day' },
    ]);
    // Valid against the FHIR R4 definitions (and the check can fail: a broken copy is refused).
    expect(() => validateResource(response as unknown as Resource)).not.toThrow();
    // Medplum checks structure and types, not required bindings' codes: a broken item is what it refuses.
    const brokenItems = response.item?.map(({ linkId: _linkId, ...rest }) => rest);
    expect(() => validateResource({ ...response, item: brokenItems } as unknown as Resource)).toThrow(
      /linkId/,
    );

    // The briefing is redrafted with the answers: it cites them and names what the record lacks.
    const briefing = await waitFor(
      () => briefingCiting(fhir, visit.id as string, `[QuestionnaireResponse/${response.id}]`),
      'the briefing citing the answers',
    );
    expect(briefing).toContain('"Pain in my left foot for two weeks"');
    // Reported, not on the record's lists: an item for the clinician; what the lists hold is not repeated.
    expect(briefing).toMatch(
      /Reports "ibuprofen daily": not on the medication list \[QuestionnaireResponse\//,
    );
    expect(briefing).not.toMatch(/Reports "metformin/);
    expect(briefing).toMatch(/Reports an allergy, "bee stings": not on the allergy list/);
    expect(briefing).not.toContain(`Reports an allergy, "${listedAllergy}"`);
    // Never a write to the lists.
    expect(await fhir.search('MedicationStatement', { patient: `Patient/${patientId}` })).toEqual([]);
    const allergiesAfter = await fhir.search('AllergyIntolerance', { patient: `Patient/${patientId}` });
    expect(allergiesAfter.length).toBe(allergiesBefore);

    // The link is spent: the FHIR server holds the answers, so the page says so.
    await page.goto(link);
    expect(await page.locator('main').textContent()).toContain('Answers have already been sent');
    await expectNoSeriousViolations(page, 'used link page');
    await page.close();
  }, 180_000);

  it('refuses forged and expired links with a plain page', async () => {
    const visit = await bookVisit(fhir, patientId);
    const invitation = await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation');
    const link = linkOf(invitation);
    const token = link.slice(link.lastIndexOf('/') + 1);
    const forged = `${token.slice(0, 20)}${token[20] === 'A' ? 'B' : 'A'}${token.slice(21)}`;
    const forgedAnswer = await fetch(`${service.url}/intake/${forged}`);
    expect(forgedAnswer.status).toBe(404);
    expect(forgedAnswer.headers.get('content-type')).toContain('text/html');
    expect(await forgedAnswer.text()).toContain('This link is not valid');

    const expired = sealInvitation(new LinkSealer(sandboxIntakeSecret(dataDir)), {
      patientId,
      encounterId: visit.id as string,
      expiresAt: Date.now() - 1_000,
      nonce: 'expired-link-nonce-0001',
    });
    const page = await browser.newPage();
    const answer = await page.goto(`${service.url}/intake/${expired}`);
    expect(answer?.status()).toBe(410);
    expect(await page.locator('main').textContent()).toContain('This link has expired');
    await expectNoSeriousViolations(page, 'expired link page');
    await page.close();
  }, 120_000);

  it('an urgent answer shows the site instruction at once and flags the care team', async () => {
    const visit = await bookVisit(fhir, patientId);
    const link = linkOf(await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation'));
    const page = await browser.newPage();
    await page.goto(link);
    await page.fill('#answer-concern', 'Chest pressure since this morning');
    await page.check('#answer-onset-0');
    await page.check('#answer-severity-2');
    await page.check('#answer-pain-0');
    await page.check('#answer-takes-medicines-1');
    await page.check('#answer-has-allergies-1');
    await page.check('#answer-chest-pain-0');
    await page.check('#answer-short-of-breath-0');
    await page.check('#answer-self-harm-1');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);

    // At once: no further page of questions, the site's instruction in an alert.
    const alert = page.locator('[role=alert]');
    expect(await alert.textContent()).toContain('Call 911 or go to the nearest emergency department');
    expect(await page.locator('form').count()).toBe(0);
    await expectNoSeriousViolations(page, 'urgent instruction page');
    await page.close();

    const response = (await answersFor(fhir, visit.id as string)) as QuestionnaireResponse;
    expect(response.status).toBe('completed');
    const [flag] = await fhir
      .search<Flag>('Flag', { patient: `Patient/${patientId}` })
      .then((flags) =>
        flags.filter((candidate) => candidate.encounter?.reference === `Encounter/${visit.id}`),
      );
    expect(flag).toMatchObject({ status: 'active', subject: { reference: `Patient/${patientId}` } });
    expect(flag?.code?.text).toContain('Chest pain, pressure or tightness now, with shortness of breath');
    expect(flag?.code?.text).toContain(`QuestionnaireResponse/${response.id}`);
    // The EHR's CDS Hooks call for the visit gets a critical urgency card naming the patient's answer.
    const hookAnswer = await fetch(`${service.url}/cds-services/guideline-nudges-encounter-start`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        hook: 'encounter-start',
        hookInstance: 'b2a3c4d5-0000-4000-8000-000000000001',
        context: { userId: 'Practitioner/sbx-clinician', patientId, encounterId: visit.id },
      }),
    });
    expect(hookAnswer.status).toBe(200);
    const { cards } = (await hookAnswer.json()) as {
      cards: { indicator: string; summary: string; detail?: string }[];
    };
    const critical = cards.find((card) => card.summary.startsWith('Visit urgency: urgent'));
    expect(critical?.indicator).toBe('critical');
    expect(critical?.detail).toContain('Urgent pre-visit intake answer: Chest pain');

    // The briefing leads its answers with the urgent flag.
    const briefing = await waitFor(
      () => briefingCiting(fhir, visit.id as string, `[Flag/${flag?.id}]`),
      'the briefing citing the flag',
    );
    expect(briefing).toContain(`[QuestionnaireResponse/${response.id}]`);
  }, 180_000);
});
