import type { Patient, QuestionnaireResponse } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { RunningService } from '../../src/service.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import { answerByForm, answersFor, bookVisit, startIntakeService, waitFor } from './intake-support.ts';

/**
 * The intake as a standalone SMART patient app (issue 16, item 1: portals that support SMART): the portal opens
 * /intake/launch, the sandbox's authorization server grants `launch/patient` and `patient/` scopes for its
 * patient, the callback finds that patient's next booked visit with the patient's token and goes on to a fresh
 * interview link for it. A callback this browser did not start is refused.
 */
describe.skipIf(!hasChromium)('standalone patient launch of the intake', () => {
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

  it("reaches the interview for the patient's next booked visit", async () => {
    // The sandbox's standalone launch gives the first patient, as a patient picker's first row would.
    const [patient] = await fhir.search<Patient>('Patient', { _count: 1, _sort: '_id' });
    const patientId = patient?.id as string;
    const visit = await bookVisit(fhir, patientId);

    const page = await browser.newPage();
    await page.goto(`${service.url}/intake/launch`);
    await page.waitForURL((url) => /^\/intake\/[A-Za-z0-9_-]{40,}$/.test(url.pathname));
    expect(await page.locator('h1').textContent()).toBe('Before your visit');
    await expectNoSeriousViolations(page, 'interview after a standalone launch');
    const link = page.url();
    // Nothing of the patient or the visit in the URL.
    expect(link).not.toContain(patientId);
    expect(link).not.toContain(visit.id as string);
    await page.close();

    // The link is for that visit: the answers land on it.
    await answerByForm(link, 'Headache since Monday');
    const response = (await waitFor(
      () => answersFor(fhir, visit.id as string),
      'the answers',
    )) as QuestionnaireResponse;
    expect(response.subject?.reference).toBe(`Patient/${patientId}`);
    expect(response.item?.find((item) => item.linkId === 'concern')?.answer).toEqual([
      { valueString: 'Headache since Monday' },
    ]);
  }, 120_000);

  it('refuses a callback this browser did not start, and an issuer it is not registered with', async () => {
    const callback = await fetch(`${service.url}/intake/callback?state=made-up&code=made-up`);
    expect(callback.status).toBe(401);
    expect(callback.headers.get('content-type')).toContain('text/html');
    const elsewhere = await fetch(
      `${service.url}/intake/launch?iss=${encodeURIComponent('https://fhir.example.org/r4')}`,
      { redirect: 'manual' },
    );
    expect(elsewhere.status).toBe(400);
    expect(elsewhere.headers.get('location')).toBeNull();
  });

  it('limits launch requests per address (each may make the service call the authorization server)', async () => {
    const statuses: number[] = [];
    // The default budget is 60 a minute per address, shared with the interview pages.
    for (let attempt = 0; attempt < 65; attempt++) {
      const answer = await fetch(`${service.url}/intake/callback?state=made-up-${attempt}&code=x`);
      await answer.text();
      statuses.push(answer.status);
      if (answer.status === 429) {
        expect(Number(answer.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
        break;
      }
    }
    expect(statuses.at(-1)).toBe(429);
    expect(statuses.slice(0, -1).every((status) => status === 401)).toBe(true);
  });
});
