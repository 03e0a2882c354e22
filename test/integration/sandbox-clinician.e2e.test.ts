import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type { DocumentReference, Provenance } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { RunningService } from '../../src/service.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from './service-harness.ts';

/**
 * The clinician's whole path on the default run, with nothing configured and nothing stood in: the sandbox EHR's
 * patient list, a real SMART EHR launch through the sandbox's own authorization server, the review page, a
 * citation, an edit and the signature, ending in a final DocumentReference signed by the sandbox clinician with
 * a sign-off Provenance in the EHR. Screenshots go to test/artifacts/.
 */
const artifacts = path.resolve('test/artifacts');

describe.skipIf(!hasChromium)('a clinician on the default sandbox run', () => {
  let service: RunningService;
  let fhir: FhirClient;
  let browser: Browser;
  const encounterId = 'clinician-visit';

  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    ({ service, fhir } = await startSandboxService());
    await service.sandbox!.seed([finishedEncounter('sbx-0001', encounterId)]);
    expect(
      (await postNotification(service, idOnlyNotification(service.fhirBaseUrl, encounterId, 1))).status,
    ).toBe(200);
    await waitForIdleQueue(service);
    browser = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await service?.close();
  });

  it('is told how to launch when /review is opened directly, with the way to the sandbox patient list', async () => {
    const page = await browser.newPage();
    const response = await page.goto(`${service.url}/review`);
    expect(response?.status()).toBe(200);
    expect(await page.locator('h1').textContent()).toBe('Draft notes for review');
    expect(await page.locator('main').textContent()).toContain("open the patient's chart in your EHR");
    await page.getByRole('link', { name: "the sandbox EHR's patient list" }).click();
    await page.waitForURL(`${service.url}/sandbox/launch`);
    expect(await page.locator('h1').textContent()).toBe('Sandbox EHR: patients');
    await page.close();
  });

  it('opens the review app from the patient list, checks a citation, edits and signs the draft', async () => {
    const [draft] = await draftsFor(fhir, encounterId);
    expect(draft?.docStatus).toBe('preliminary');

    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${service.url}/sandbox/launch`);
    // The list names synthetic patients with their age and how many drafts wait for them.
    const patientSection = page.locator('section.patient', { has: page.locator('#patient-sbx-0001') });
    expect(await patientSection.locator('.meta').textContent()).toMatch(
      /\d+ years.*1 draft waiting for review/,
    );
    await expectNoSeriousViolations(page, 'sandbox launch page');
    await page.screenshot({ path: path.join(artifacts, 'sandbox-launch-page.png'), fullPage: true });

    // A real EHR launch: launch id to the app, the sandbox's authorize page, the callback, then the review page.
    await patientSection.locator(`a[href*="encounter=${encounterId}"]`).click();
    await page.waitForURL((url) => url.pathname === '/review' && url.searchParams.has('context'));
    const article = page.locator(`article[data-draft-id="${draft.id}"]`);
    await article.waitFor();
    expect(await article.locator('.launched-badge').textContent()).toBe('This visit');
    expect(await page.locator('#user-line').textContent()).toBe('Signed in as Dr. Robin Sandbox');

    // A citation opens its source, read with the clinician's own token.
    const citation = article.getByRole('button', { name: /^Open cited source \[/ }).first();
    const cited = (await citation.getAttribute('aria-label'))?.match(/\[(.+)\]/)?.[1] as string;
    await citation.click();
    const dialog = page.getByRole('dialog', { name: `Cited source: ${cited}` });
    await expect.poll(() => dialog.locator('#citation-fields').textContent()).not.toBe('');
    await dialog.getByRole('button', { name: 'Close' }).click();

    await page.screenshot({ path: path.join(artifacts, 'sandbox-review-launched.png'), fullPage: true });
    // Edit, then sign with the confirmation.
    await article.getByRole('button', { name: /^Edit text: / }).click();
    const editor = article.getByRole('textbox', { name: /^Edit text: / });
    await editor.fill(`${await editor.inputValue()}\nReviewed with the patient. [${cited}]`);
    await article.getByRole('button', { name: 'Save edit' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Edit saved');
    await page
      .locator(`article[data-draft-id="${draft.id}"]`)
      .getByRole('button', { name: /^Sign note: / })
      .click();
    await page
      .getByRole('dialog', { name: 'Sign note as final?' })
      .getByRole('button', { name: 'Sign as final' })
      .click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Signed');
    await page.screenshot({ path: path.join(artifacts, 'sandbox-review-signed.png'), fullPage: true });
    await page.close();

    // In the EHR: final, signed by the sandbox clinician, with the edit, and a sign-off Provenance.
    const signed = await fhir.read<DocumentReference>('DocumentReference', draft.id as string);
    expect(signed.docStatus).toBe('final');
    expect(signed.authenticator?.reference).toBe('Practitioner/sbx-clinician');
    const text = Buffer.from(signed.content[0].attachment.data as string, 'base64').toString('utf8');
    expect(text).toContain('Reviewed with the patient.');
    expect(text).toMatch(/reviewed and signed by Dr\. Robin Sandbox/);
    // The sign-off targets the signed version (`.../_history/N`), which a `target=` search on the bare id misses.
    const provenances = (await fhir.search<Provenance>('Provenance', { _count: '500' })).filter(
      (provenance) =>
        provenance.target.some((target) => target.reference?.startsWith(`DocumentReference/${draft.id}`)),
    );
    const signOff = provenances.find((provenance) =>
      provenance.activity?.coding?.some((coding) => coding.code === 'AU'),
    );
    expect(signOff?.agent?.some((agent) => agent.who?.reference === 'Practitioner/sbx-clinician')).toBe(true);
  });
});
