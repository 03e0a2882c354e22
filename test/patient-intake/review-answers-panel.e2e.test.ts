import type { QuestionnaireResponse } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { RunningService } from '../../src/service.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import {
  answerByForm,
  answersFor,
  bookVisit,
  briefingCiting,
  invitationFor,
  linkOf,
  patientWithDiabetes,
  startIntakeService,
  waitFor,
} from './intake-support.ts';

/**
 * The review app shows the patient's answers next to the briefing (issue 16, item 5), not only behind the
 * citation: the clinician launches from the sandbox EHR, and the briefing that cites the QuestionnaireResponse
 * carries a panel with each question as asked and its answer, read with the clinician's token. axe-core on it.
 */
describe.skipIf(!hasChromium)("the patient's answers beside the briefing in the review app", () => {
  let service: RunningService;
  let fhir: FhirClient;
  let browser: Browser;

  beforeAll(async () => {
    ({ service, fhir } = await startIntakeService());
    browser = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await service?.close();
  });

  it('lists each question and answer of the cited QuestionnaireResponse in the briefing', async () => {
    const patientId = await patientWithDiabetes(fhir);
    const visit = await bookVisit(fhir, patientId);
    const invitation = await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation');
    await answerByForm(linkOf(invitation), 'Itchy rash on both arms');
    const response = (await waitFor(
      () => answersFor(fhir, visit.id as string),
      'the answers',
    )) as QuestionnaireResponse;
    await waitFor(
      () => briefingCiting(fhir, visit.id as string, `[QuestionnaireResponse/${response.id}]`),
      'the briefing citing the answers',
    );

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${service.url}/sandbox/launch/open?patient=${patientId}&encounter=${visit.id}`);
    await page.waitForURL((url) => url.pathname === '/review' && url.searchParams.has('context'));
    const panel = page.getByRole('region', { name: 'The patient’s answers before the visit' });
    await panel.first().waitFor();
    // Open without a click: each question as the patient was asked it, with the answer.
    await expect
      .poll(() => panel.first().locator('dl').textContent(), { timeout: 20_000 })
      .toContain('Itchy rash on both arms');
    const terms = await panel.first().locator('dt').allTextContents();
    const values = await panel.first().locator('dd').allTextContents();
    const shown = new Map(terms.map((term, index) => [term, values[index]]));
    expect(shown.get('What is the main reason for your visit?')).toBe('Itchy rash on both arms');
    for (const item of response.item ?? []) expect(shown.has(item.text as string)).toBe(true);
    // Inside the briefing's own article, after its text.
    const article = page.locator('article', { has: panel.first() });
    expect(await article.locator('.draft-title').textContent()).toMatch(/briefing/i);
    expect(await panel.first().textContent()).toContain(`From QuestionnaireResponse/${response.id}`);
    await expectNoSeriousViolations(page, 'review page with the patient answers');
    await page.close();
  }, 180_000);
});
