import type { IncomingMessage, ServerResponse } from 'node:http';
import type { FhirResource } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageSectionHeading } from '../../agents/image-reading.ts';
import type { DraftView } from '../../src/http/drafts-api-routes.ts';
import { createMemoryDraftLifecycle } from '../review/memory-draft-lifecycle.ts';
import { type ReviewHarness, startReviewHarness } from '../review/review-harness.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import { halvesJpeg, halvesPng } from './synthetic-images.ts';

/**
 * The thumbnails in a real browser (Chromium through playwright-core): after an EHR launch through the strict
 * test authorization server, each line of a draft's images section shows its picture, loaded with the
 * clinician's token under the page's Content-Security-Policy, and opening the citation shows it larger.
 */
const fhirResources: Record<string, FhirResource> = {
  'Patient/p1': { resourceType: 'Patient', id: 'p1', name: [{ given: ['Ada'], family: 'Testperson' }] },
  'Practitioner/dr-a': {
    resourceType: 'Practitioner',
    id: 'dr-a',
    name: [{ given: ['Dana'], family: 'Okafor' }],
  },
  'Encounter/e1': {
    resourceType: 'Encounter',
    id: 'e1',
    status: 'finished',
    class: { code: 'AMB' },
    subject: { reference: 'Patient/p1' },
    period: { start: '2026-11-20T09:00:00Z' },
  },
  'Media/chest': {
    resourceType: 'Media',
    id: 'chest',
    status: 'completed',
    subject: { reference: 'Patient/p1' },
    modality: { text: 'chest X-ray' },
    content: { contentType: 'image/png', data: halvesPng(1800, 1200).toString('base64') },
  },
  'DocumentReference/photo': {
    resourceType: 'DocumentReference',
    id: 'photo',
    status: 'current',
    subject: { reference: 'Patient/p1' },
    content: [{ attachment: { contentType: 'image/jpeg', url: 'Binary/photo-bytes' } }],
  },
  'Binary/photo-bytes': {
    resourceType: 'Binary',
    id: 'photo-bytes',
    contentType: 'image/jpeg',
    data: halvesJpeg(400, 300).toString('base64'),
  },
};

const authorizations: string[] = [];

function serveFhir(request: IncomingMessage, response: ServerResponse) {
  authorizations.push(request.headers.authorization ?? '');
  const url = new URL(request.url ?? '/', 'http://localhost');
  const resource = fhirResources[url.pathname.replace(/^\/fhir\//, '')];
  response.writeHead(resource ? 200 : 404, { 'content-type': 'application/fhir+json' });
  response.end(
    JSON.stringify(
      resource ?? { resourceType: 'OperationOutcome', issue: [{ severity: 'error', code: 'not-found' }] },
    ),
  );
}

const draft: DraftView = {
  id: 'summary-1',
  patientId: 'p1',
  encounterId: 'e1',
  kind: 'progress-summary',
  status: 'preliminary',
  text: [
    '## Progress summary (AI draft - not final until signed by a clinician)',
    'Follow-up visit [Encounter/e1].',
    '',
    imageSectionHeading,
    '- [Media/chest] chest X-ray, 2026-11-20: Frontal chest radiograph. No clear abnormality seen.',
    '- [DocumentReference/photo] wound photograph, 2026-11-19: Healing wound on the forearm.',
  ].join('\n'),
  title: 'Progress summary',
  createdAt: '2026-11-27T10:00:00Z',
  citations: ['Encounter/e1', 'Media/chest', 'DocumentReference/photo'],
  flagged: false,
  mode: 'write',
};

describe.skipIf(!hasChromium)('review app thumbnails of cited images, in Chromium', () => {
  let harness: ReviewHarness;
  let browser: Browser;

  beforeAll(async () => {
    harness = await startReviewHarness({
      authorization: { fhirHandler: (request, response) => serveFhir(request, response) },
      lifecycleFor: () => createMemoryDraftLifecycle([draft]).lifecycle,
    });
    browser = await launchChromium();
  }, 60_000);

  afterAll(async () => {
    await browser?.close();
    await harness?.close();
  });

  it('shows a thumbnail beside each image line and the picture in the citation view', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    const refusedByPolicy: string[] = [];
    page.on('console', (message) => {
      if (/Content Security Policy/i.test(message.text())) refusedByPolicy.push(message.text());
    });
    try {
      const response = await page.goto(
        harness.launchUrl({ patient: 'p1', encounter: 'e1', fhirUser: 'Practitioner/dr-a' }),
      );
      expect(response?.status()).toBe(200);
      await page.locator('article.draft').first().waitFor();
      const thumbnails = page.locator('img.citation-thumbnail:not([hidden])');
      await expect.poll(() => thumbnails.count(), { timeout: 20_000 }).toBe(2);
      const sizes = await thumbnails.evaluateAll((images) =>
        images.map((image) => {
          const element = image as HTMLImageElement;
          return {
            width: element.naturalWidth,
            height: element.naturalHeight,
            data: element.src.startsWith('data:image/jpeg;base64,'),
          };
        }),
      );
      expect(sizes).toEqual([
        { width: 160, height: 107, data: true },
        { width: 160, height: 120, data: true },
      ]);
      // Read with the clinician's token, never without one.
      expect(authorizations.every((header) => header.startsWith('Bearer '))).toBe(true);

      await page.getByRole('button', { name: 'Open cited source [Media/chest]' }).click();
      const picture = page.locator('#citation-image');
      await expect
        .poll(() => picture.evaluate((image) => (image as HTMLImageElement).naturalWidth), {
          timeout: 20_000,
        })
        .toBe(896);
      expect(await picture.isVisible()).toBe(true);
      expect(await picture.getAttribute('alt')).toBe('The cited image Media/chest');
      expect(refusedByPolicy).toEqual([]);
    } finally {
      await context.close();
    }
  });
});
