import { mkdirSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import type { FhirResource } from 'fhir/r4.js';
import type { Browser, BrowserContext, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DraftView } from '../../src/http/drafts-api-routes.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import { createMemoryDraftLifecycle } from './memory-draft-lifecycle.ts';
import { type ReviewHarness, startReviewHarness } from './review-harness.ts';

/**
 * The clinician's path in a real browser (Debian's Chromium driven by playwright-core): EHR launch through the
 * strict test authorization server, the review page, citations, edit, sign, reject, plus the refusals (state,
 * id_token, expiry, another patient, no session, no CSRF). Screenshots go to test/artifacts/; axe-core checks
 * the page in the same run.
 */
const artifacts = path.resolve('test/artifacts');

const patientId = 'p1';
const otherPatientId = 'p2';
const practitioner = 'Practitioner/dr-a';

const fhirResources: Record<string, FhirResource> = {
  'Patient/p1': { resourceType: 'Patient', id: 'p1', name: [{ given: ['Ada'], family: 'Testperson' }] },
  'Practitioner/dr-a': {
    resourceType: 'Practitioner',
    id: 'dr-a',
    name: [{ prefix: ['Dr.'], given: ['Dana'], family: 'Okafor' }],
  },
  'Practitioner/dr-b': {
    resourceType: 'Practitioner',
    id: 'dr-b',
    name: [{ given: ['Ben'], family: 'Ilunga' }],
  },
  'Encounter/e1': {
    resourceType: 'Encounter',
    id: 'e1',
    status: 'finished',
    class: { code: 'AMB' },
    type: [
      { coding: [{ system: 'http://snomed.info/sct', code: '390906007', display: 'Follow-up encounter' }] },
    ],
    subject: { reference: 'Patient/p1' },
    period: { start: '2026-11-20T09:00:00Z' },
  },
  'Encounter/e0': {
    resourceType: 'Encounter',
    id: 'e0',
    status: 'finished',
    class: { code: 'AMB' },
    type: [{ text: 'Encounter for check up' }],
    subject: { reference: 'Patient/p1' },
    period: { start: '2026-09-02T14:00:00Z' },
  },
  'Observation/bp1': {
    resourceType: 'Observation',
    id: 'bp1',
    status: 'final',
    code: { text: 'Blood pressure systolic' },
    subject: { reference: 'Patient/p1' },
    effectiveDateTime: '2026-11-20T09:00:00Z',
    valueQuantity: { value: 152, unit: 'mmHg' },
  },
  'Condition/htn': {
    resourceType: 'Condition',
    id: 'htn',
    code: { text: 'Essential hypertension' },
    subject: { reference: 'Patient/p1' },
  },
  'Observation/p2-glucose': {
    resourceType: 'Observation',
    id: 'p2-glucose',
    status: 'final',
    code: { text: 'Glucose' },
    subject: { reference: 'Patient/p2' },
  },
};

/** Set when the EHR should refuse the clinician's token, as it does once the user signs out there. */
const ehr = { refusesTokens: false };

function serveFhir(request: IncomingMessage, response: ServerResponse) {
  const url = new URL(request.url ?? '/', 'http://localhost');
  if (ehr.refusesTokens) {
    response.writeHead(401, { 'content-type': 'application/fhir+json', 'www-authenticate': 'Bearer' });
    response.end(
      JSON.stringify({
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'login', diagnostics: 'token revoked' }],
      }),
    );
    return;
  }
  const key = url.pathname.replace(/^\/fhir\//, '').replace(/\/_history\/[^/]+$/, '');
  const resource = fhirResources[key];
  response.writeHead(resource ? 200 : 404, { 'content-type': 'application/fhir+json' });
  response.end(
    JSON.stringify(
      resource ?? {
        resourceType: 'OperationOutcome',
        issue: [{ severity: 'error', code: 'not-found', diagnostics: 'not found' }],
      },
    ),
  );
}

const draft = (id: string, extra: Partial<DraftView>): DraftView => ({
  id,
  patientId,
  encounterId: 'e1',
  kind: 'progress-summary',
  status: 'preliminary',
  text: '',
  title: 'Progress summary',
  createdAt: '2026-11-27T10:00:00Z',
  citations: [],
  flagged: false,
  mode: 'write',
  ...extra,
});

const unsignedHeading = '## Progress summary (AI draft - not final until signed by a clinician)';

const memory = createMemoryDraftLifecycle([
  // The draft of the launched encounter (e1): listed first and marked, though not the newest.
  draft('summary-1', {
    text: [
      unsignedHeading,
      'Hypertension [Condition/htn], poorly controlled: systolic 152 mmHg [Observation/bp1].',
      '',
      'Active problems:',
      '- Essential hypertension [Condition/htn]',
      '- Raised blood pressure, **152 mmHg** systolic [Observation/bp1]',
      '',
      'A literal <img src=x onerror="window.pwned=1"> stays text.',
    ].join('\n'),
    citations: ['Condition/htn', 'Observation/bp1'],
  }),
  draft('summary-0', {
    encounterId: 'e0',
    title: 'Progress summary',
    status: 'final',
    signedBy: 'Practitioner/dr-b',
    createdAt: '2026-11-28T08:00:00Z',
    text: '## Progress summary (drafted with AI assistance; reviewed and signed by Ben Ilunga, 2026-09-03)\n- Check-up, no concerns [Observation/bp1]',
    citations: ['Observation/bp1'],
  }),
  draft('briefing-1', {
    encounterId: 'e0',
    kind: 'previsit-briefing',
    title: 'Pre-visit briefing',
    text: 'Review blood pressure [Observation/bp1].',
    citations: ['Observation/bp1'],
    flagged: true,
    removedStatements: [
      { line: '- Chest pain since Tuesday', reason: 'no-citation' },
      {
        line: '- Creatinine 2.1 [Observation/unread]',
        reason: 'unknown-citation',
        citations: ['Observation/unread'],
      },
      { line: '', reason: 'other-patient' },
    ],
  }),
  draft('nudge-1', {
    encounterId: 'e0',
    kind: 'nudges',
    title: 'Suggested actions',
    text: 'Consider intensifying antihypertensive therapy [Observation/bp1/_history/1].',
    citations: ['Observation/bp1'],
  }),
  draft('p2-summary', { patientId: otherPatientId, text: 'Other patient [Observation/p2-glucose].' }),
]);

let harness: ReviewHarness;
let browser: Browser;
/** A stand-in for the EHR's own web page, on another origin, that shows the review app in an iframe pane. */
let ehrPage: Server;
let ehrOrigin: string;

async function newPage(): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
  return { context, page: await context.newPage() };
}

async function launchedPage(fhirUser = practitioner) {
  const { context, page } = await newPage();
  const response = await page.goto(harness.launchUrl({ patient: patientId, encounter: 'e1', fhirUser }));
  expect(response?.status()).toBe(200);
  expect(new URL(page.url()).pathname).toBe('/review');
  await page.locator('article.draft').first().waitFor();
  return { context, page };
}

/** Runs fetch inside the page (same origin, with its cookie), as the page's own script would. */
function pageFetch(
  page: Page,
  pathName: string,
  init: { method?: string; headers?: Record<string, string>; body?: string } = {},
) {
  return page.evaluate(
    async ({ pathName, init }) => {
      const context = new URLSearchParams(window.location.search).get('context') ?? '';
      const response = await fetch(pathName, {
        ...init,
        headers: { 'x-launch-context': context, ...(init.headers ?? {}) },
      });
      return { status: response.status, body: await response.json().catch(() => undefined) };
    },
    { pathName, init },
  );
}

async function csrfToken(page: Page): Promise<string> {
  return (await pageFetch(page, '/api/drafts/session')).body.csrfToken;
}

describe.skipIf(!hasChromium)('review app in Chromium', () => {
  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    ehrPage = createServer((_request, response) => {
      response.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
      response.end(
        '<!doctype html><html lang="en"><head><title>EHR</title><style>body{margin:0}iframe{border:0}</style></head>' +
          '<body><main><iframe id="pane" title="Draft notes for review" width="1280" height="800"></iframe></main></body></html>',
      );
    });
    await new Promise<void>((resolve) => ehrPage.listen(0, '127.0.0.1', resolve));
    ehrOrigin = `http://127.0.0.1:${(ehrPage.address() as AddressInfo).port}`;
    harness = await startReviewHarness({
      frameAncestors: ["'self'", ehrOrigin],
      authorization: { fhirHandler: (request, response) => serveFhir(request, response) },
      lifecycleFor: () => memory.lifecycle,
    });
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await harness?.close();
    ehrPage?.closeAllConnections();
    await new Promise<void>((resolve) => (ehrPage ? ehrPage.close(() => resolve()) : resolve()));
  });

  it('works inside the EHR window as a 1280x800 iframe pane', async () => {
    const { context, page } = await newPage();
    await page.goto(`${ehrOrigin}/`);
    const launchUrl = harness.launchUrl({ patient: patientId, encounter: 'e1', fhirUser: practitioner });
    await page.evaluate((url) => {
      (document.getElementById('pane') as HTMLIFrameElement).src = url;
    }, launchUrl);
    const pane = page.frameLocator('#pane');
    await pane.locator('article.draft').first().waitFor();
    expect(await pane.locator('.ai-banner').isVisible()).toBe(true);
    // The first draft's actions are visible without scrolling the pane.
    const signBox = await pane.locator('article.draft button.sign').first().boundingBox();
    expect(signBox && signBox.y + signBox.height).toBeLessThan(800);
    await page.screenshot({ path: path.join(artifacts, 'review-in-ehr-iframe.png') });
    await context.close();
  });

  it('works with the production cookie (SameSite=None; Secure; Partitioned) in a cross-site EHR iframe', async () => {
    // http://localhost counts as a secure origin in Chromium, so the default cookie settings apply unchanged;
    // the EHR page on 127.0.0.1 is another site, as a real EHR would be.
    const production = await startReviewHarness({
      authorization: { fhirHandler: (request, response) => serveFhir(request, response) },
      lifecycleFor: () => memory.lifecycle,
      cookie: 'production',
      frameAncestors: [ehrOrigin],
    });
    const { context, page } = await newPage();
    try {
      const launchResponse = await fetch(
        production.launchUrl({ patient: patientId, fhirUser: practitioner }),
        {
          redirect: 'manual',
        },
      );
      const cookie = launchResponse.headers.get('set-cookie') ?? '';
      expect(cookie).toMatch(/^__Host-ehr-draft-session=/);
      expect(cookie).toContain('SameSite=None');
      expect(cookie).toContain('Secure');
      expect(cookie).toContain('Partitioned');

      await page.goto(`${ehrOrigin}/`);
      const launchUrl = production.launchUrl({ patient: patientId, encounter: 'e1', fhirUser: practitioner });
      await page.evaluate((url) => {
        (document.getElementById('pane') as HTMLIFrameElement).src = url;
      }, launchUrl);
      const pane = page.frameLocator('#pane');
      await pane.locator('article.draft').first().waitFor();
      expect(await pane.locator('article.draft').count()).toBeGreaterThan(0);
    } finally {
      await context.close();
      await production.close();
    }
  });

  it('shows headings and lists, names instead of ids, the launched visit’s draft first and marked, and what the citation check removed', async () => {
    const { context, page } = await launchedPage();
    await expect.poll(() => page.locator('#patient-line').textContent()).toContain('Ada Testperson');

    // The header names the patient, the visit and the clinician; the ids stay on hover.
    const header = page.locator('#patient-line');
    expect(await header.textContent()).toMatch(/^Patient: Ada Testperson · Visit: Follow-up encounter, \S/);
    expect(await header.textContent()).not.toMatch(/Patient\/p1|Encounter\/e1/);
    expect(await header.locator('span', { hasText: 'Follow-up encounter' }).getAttribute('title')).toBe(
      'Encounter/e1',
    );
    expect(await page.locator('#user-line').textContent()).toBe('Signed in as Dr. Dana Okafor');

    // The launched encounter's draft is the first on the page and marked, though another draft is newer.
    const articles = page.locator('article.draft');
    expect(await articles.first().getAttribute('data-draft-id')).toBe('summary-1');
    const launched = page.locator('article[data-draft-id="summary-1"]');
    expect(await launched.locator('.launched-badge').isVisible()).toBe(true);
    expect(await launched.locator('.launched-badge').textContent()).toBe('This visit');
    expect(await page.locator('#launched-heading').textContent()).toMatch(
      /^This visit: Follow-up encounter, /,
    );
    for (const other of ['summary-0', 'briefing-1', 'nudge-1'])
      expect(await page.locator(`article[data-draft-id="${other}"] .launched-badge`).isVisible()).toBe(false);

    // Markdown headings and section labels are headings under the draft's own title (h3); lists are lists.
    const text = launched.locator('.draft-text');
    expect(await text.locator('h4').allTextContents()).toEqual([
      'Progress summary (AI draft - not final until signed by a clinician)',
    ]);
    expect(await text.locator('h5').allTextContents()).toEqual(['Active problems']);
    expect(await text.locator('ul > li').count()).toBe(2);
    expect(await text.locator('li').first().textContent()).toBe('Essential hypertension [Condition/htn]');
    expect(await text.locator('li strong').textContent()).toBe('152 mmHg');
    expect(await text.textContent()).not.toMatch(/^##|\n- /m);
    // A citation inside a list item is still a button that opens the source.
    expect(
      await text
        .locator('li')
        .first()
        .getByRole('button', { name: 'Open cited source [Condition/htn]' })
        .count(),
    ).toBe(1);

    // Visits and signers by name: no raw ids in what the clinician reads; the ids are on hover.
    const meta = launched.locator('.draft-meta');
    expect(await meta.textContent()).toContain('Follow-up encounter, ');
    expect(await meta.textContent()).not.toContain('e1');
    const signedMeta = page.locator('article[data-draft-id="summary-0"] .draft-meta');
    expect(await signedMeta.textContent()).toContain('Encounter for check up, ');
    expect(await signedMeta.textContent()).toContain('signed by Ben Ilunga');
    expect(await signedMeta.textContent()).not.toMatch(/Practitioner\/|Encounter\//);
    expect(await signedMeta.locator('span', { hasText: 'signed by Ben Ilunga' }).getAttribute('title')).toBe(
      'Practitioner/dr-b',
    );

    // The flagged draft lists what the citation check removed, with the reason; removed citations are not links.
    const flagged = page.locator('article[data-draft-id="briefing-1"] .flagged');
    expect(await flagged.isVisible()).toBe(true);
    const removed = flagged.locator('.removed-list li');
    expect(await removed.allTextContents()).toEqual([
      'Chest pain since Tuesday - removed because it cited no source.',
      'Creatinine 2.1 [Observation/unread] - removed because it cited a source that was not read for this draft.',
      'A statement (not shown here) - removed because it cited another patient’s record.',
    ]);
    expect(await flagged.locator('button').count()).toBe(0);

    await page.screenshot({ path: path.join(artifacts, 'review-rendered.png'), fullPage: true });
    await expectNoSeriousViolations(page, 'rendered drafts');
    await context.close();
  });

  it('launches, lists the drafts with their status, opens a citation, edits and signs', async () => {
    const { context, page } = await launchedPage();
    await expect.poll(() => page.locator('#patient-line').textContent()).toContain('Ada Testperson');
    await expect.poll(() => page.locator('.ai-banner').textContent()).toContain('not final until you sign');

    // The launched visit's draft first; the rest grouped: summary, briefing, and nudges under "Suggested
    // actions"; the other patient's draft is absent.
    const summary = page.locator('article[data-draft-id="summary-1"]');
    expect(await page.locator('[data-group="launched"] article[data-draft-id="summary-1"]').count()).toBe(1);
    expect(await page.locator('[data-group="summary"] article').count()).toBe(1);
    expect(await page.locator('[data-group="briefing"] article[data-draft-id="briefing-1"]').count()).toBe(1);
    expect(await page.locator('[data-group="actions"] article[data-draft-id="nudge-1"]').count()).toBe(1);
    expect(await page.locator('article[data-draft-id="p2-summary"]').count()).toBe(0);
    expect(await summary.locator('.status-badge').textContent()).toBe('Draft - not signed');
    expect(await page.locator('article[data-draft-id="briefing-1"] .flagged').isVisible()).toBe(true);
    expect(await summary.locator('.flagged').isVisible()).toBe(false);

    // Model text is text: the literal tag is shown, not parsed.
    expect(await page.locator('.draft-text img').count()).toBe(0);
    expect(await summary.locator('.draft-text').textContent()).toContain(
      '<img src=x onerror="window.pwned=1">',
    );
    expect(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned)).toBeUndefined();
    await page.screenshot({ path: path.join(artifacts, 'review-list.png'), fullPage: true });
    await expectNoSeriousViolations(page, 'draft list');

    // Open a citation with the keyboard.
    const citation = summary.getByRole('button', { name: 'Open cited source [Observation/bp1]' }).first();
    await citation.focus();
    await page.keyboard.press('Enter');
    const dialog = page.getByRole('dialog', { name: 'Cited source: Observation/bp1' });
    await dialog.waitFor();
    await expect.poll(() => dialog.locator('#citation-fields').textContent()).toContain('152 mmHg');
    expect(await dialog.locator('#citation-fields').textContent()).toContain('Blood pressure systolic');
    await page.screenshot({ path: path.join(artifacts, 'review-citation.png') });
    await expectNoSeriousViolations(page, 'citation dialog');
    await page.keyboard.press('Escape');
    await expect.poll(() => dialog.isVisible()).toBe(false);
    expect(await page.evaluate(() => document.activeElement?.getAttribute('aria-label'))).toBe(
      'Open cited source [Observation/bp1]',
    );

    // A versioned citation opens that version.
    await page
      .locator('article[data-draft-id="nudge-1"]')
      .getByRole('button', { name: 'Open cited source [Observation/bp1/_history/1]' })
      .click();
    const versioned = page.getByRole('dialog', { name: 'Cited source: Observation/bp1/_history/1' });
    await expect.poll(() => versioned.locator('#citation-fields').textContent()).toContain('152 mmHg');
    await versioned.getByRole('button', { name: 'Close' }).click();

    // Edit, save, then sign.
    await summary.getByRole('button', { name: 'Edit text: Progress summary' }).click();
    const editor = summary.getByRole('textbox', { name: 'Edit text: Progress summary' });
    await editor.fill(
      `${unsignedHeading}\nHypertension [Condition/htn], uncontrolled: systolic 152 mmHg [Observation/bp1]. Reviewed.`,
    );
    await page.screenshot({ path: path.join(artifacts, 'review-editing.png') });
    await expectNoSeriousViolations(page, 'editor');
    await summary.getByRole('button', { name: 'Save edit' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Edit saved');
    const saved = page.locator('article[data-draft-id="summary-1"]');
    expect(await saved.locator('.draft-text').textContent()).toContain('Reviewed.');

    // Signing asks once: cancel leaves the draft as it was, confirm signs.
    await saved.getByRole('button', { name: 'Sign note: Progress summary' }).click();
    const confirmSign = page.getByRole('dialog', { name: 'Sign note as final?' });
    await confirmSign.waitFor();
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('sign-cancel');
    await expectNoSeriousViolations(page, 'sign confirmation');
    await page.screenshot({ path: path.join(artifacts, 'review-sign-confirm.png') });
    await page.keyboard.press('Enter');
    await expect.poll(() => confirmSign.isVisible()).toBe(false);
    expect(memory.calls.some((call) => call.method === 'signDraft')).toBe(false);
    expect(await page.evaluate(() => document.activeElement?.getAttribute('aria-label'))).toBe(
      'Sign note: Progress summary',
    );
    await saved.getByRole('button', { name: 'Sign note: Progress summary' }).click();
    await confirmSign.getByRole('button', { name: 'Sign as final' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Signed');
    expect(await page.locator('article[data-draft-id="summary-1"] .status-badge').textContent()).toBe(
      'Signed',
    );
    expect(await page.locator('article[data-draft-id="summary-1"] button.sign').isVisible()).toBe(false);
    // The signed text says who signed it, by name; nothing in it still says it is not final.
    const signedArticle = page.locator('article[data-draft-id="summary-1"]');
    expect(await signedArticle.locator('.draft-text h4').textContent()).toMatch(
      /^Progress summary \(drafted with AI assistance; reviewed and signed by Dr\. Dana Okafor, \d{4}-\d{2}-\d{2}\)$/,
    );
    expect(await signedArticle.locator('.draft-text').textContent()).not.toContain('not final until signed');
    const signer = signedArticle.locator('.draft-meta span', { hasText: 'signed by Dr. Dana Okafor' });
    expect(await signer.getAttribute('title')).toBe(practitioner);
    await page.screenshot({ path: path.join(artifacts, 'review-signed.png'), fullPage: true });

    const edit = memory.calls.find((call) => call.method === 'editDraft' && call.draftId === 'summary-1');
    expect(edit?.arguments[1]).toBe(practitioner);
    const sign = memory.calls.find((call) => call.method === 'signDraft' && call.draftId === 'summary-1');
    expect(sign?.arguments[0]).toEqual({ practitioner, practitionerName: 'Dr. Dana Okafor' });
    expect(memory.drafts.get('summary-1')?.status).toBe('final');
    await context.close();
  });

  it('is usable from the keyboard: skip link, then the first citation, with a visible focus ring', async () => {
    const { context, page } = await launchedPage();
    await page.keyboard.press('Tab');
    expect(await page.evaluate(() => document.activeElement?.textContent)).toBe('Skip to drafts');
    await page.keyboard.press('Enter');
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('drafts');
    await page.keyboard.press('Tab');
    const focused = await page.evaluate(() => {
      const element = document.activeElement as HTMLElement;
      return { label: element.getAttribute('aria-label'), outline: getComputedStyle(element).outlineStyle };
    });
    expect(focused.label).toMatch(/^Open cited source \[/);
    expect(focused.outline).toBe('solid');
    await context.close();
  });

  it('rejects a draft with a reason given in an accessible dialog', async () => {
    const { context, page } = await launchedPage();
    const briefing = page.locator('article[data-draft-id="briefing-1"]');
    await briefing.getByRole('button', { name: 'Reject: Pre-visit briefing' }).click();
    const dialog = page.getByRole('dialog', { name: 'Reject draft' });
    await dialog.waitFor();
    // The reason field has focus and is required.
    expect(await page.evaluate(() => document.activeElement?.id)).toBe('reject-reason');
    await dialog.getByRole('button', { name: 'Reject draft' }).click();
    await expect.poll(() => dialog.locator('#reject-error').isVisible()).toBe(true);
    await expectNoSeriousViolations(page, 'reject dialog');
    await page.screenshot({ path: path.join(artifacts, 'review-reject-dialog.png') });
    await dialog
      .getByRole('textbox', { name: 'Reason for rejecting (required)' })
      .fill('Briefing is for the wrong visit');
    await dialog.getByRole('button', { name: 'Reject draft' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('rejected');
    expect(await page.locator('article[data-draft-id="briefing-1"] .status-badge').textContent()).toBe(
      'Rejected',
    );
    const reject = memory.calls.find((call) => call.method === 'rejectDraft');
    expect(reject?.arguments[0]).toEqual({ practitioner, reason: 'Briefing is for the wrong visit' });
    await context.close();
  });

  it('regenerates a draft', async () => {
    const { context, page } = await launchedPage();
    await page
      .locator('article[data-draft-id="nudge-1"]')
      .getByRole('button', { name: 'Regenerate: Suggested actions' })
      .click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('new draft was requested');
    await expect
      .poll(() => page.locator('article[data-draft-id="nudge-1"] .draft-meta').textContent())
      .toContain('a new draft has been requested');
    expect(memory.calls.some((call) => call.method === 'regenerateDraft' && call.draftId === 'nudge-1')).toBe(
      true,
    );
    await context.close();
  });

  it('refuses another patient’s draft and citation (403), changes without CSRF (403), calls without a session (401)', async () => {
    const { context, page } = await launchedPage();
    expect((await pageFetch(page, '/api/drafts/p2-summary')).status).toBe(403);
    const token = await csrfToken(page);
    const signOther = await pageFetch(page, '/api/drafts/p2-summary/sign', {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-csrf-token': token },
      body: '{}',
    });
    expect(signOther.status).toBe(403);
    expect(signOther.body.resourceType).toBe('OperationOutcome');
    expect((await pageFetch(page, '/api/drafts/citations/Observation/p2-glucose')).status).toBe(403);

    const noCsrf = await pageFetch(page, '/api/drafts/nudge-1/reject', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ reason: 'no token' }),
    });
    expect(noCsrf.status).toBe(403);
    expect(memory.calls.some((call) => call.method === 'rejectDraft' && call.draftId === 'nudge-1')).toBe(
      false,
    );

    const noSession = await fetch(`${harness.serviceUrl}/api/drafts`);
    expect(noSession.status).toBe(401);
    expect((await noSession.json()).resourceType).toBe('OperationOutcome');
    // A page opened without a launch says how to open it instead of showing drafts; with a launch id the
    // browser holds no session for, the app says the session has ended.
    const { context: fresh, page: stranger } = await newPage();
    await stranger.goto(`${harness.serviceUrl}/review`);
    expect(await stranger.locator('main').textContent()).toContain("open the patient's chart in your EHR");
    expect(await stranger.locator('article.draft').count()).toBe(0);
    await stranger.goto(`${harness.serviceUrl}/review?context=not-a-launch-of-this-browser`);
    await expect.poll(() => stranger.locator('#error').textContent()).toContain('session');
    expect(await stranger.locator('article.draft').count()).toBe(0);
    await stranger.screenshot({ path: path.join(artifacts, 'review-no-session.png') });
    await fresh.close();
    await context.close();
  });

  it('ends the session when the access token expires (401)', async () => {
    const { context, page } = await launchedPage();
    expect((await pageFetch(page, '/api/drafts')).status).toBe(200);
    harness.clockOffset.milliseconds = 2 * 3_600_000;
    try {
      expect((await pageFetch(page, '/api/drafts')).status).toBe(401);
      // The page says so in words, not with the API's diagnostics.
      await page.reload();
      await expect
        .poll(() => page.locator('#error').textContent())
        .toBe(
          'Your session with the EHR has ended. Open this app again from the patient’s chart in your EHR.',
        );
    } finally {
      harness.clockOffset.milliseconds = 0;
    }
    await context.close();
  });

  it('says in one plain sentence that the session ended when the EHR refuses the clinician’s token', async () => {
    const sentence =
      'Your session with the EHR has ended. Open this app again from the patient’s chart in your EHR.';
    // Refused while the page is open: the next action ends the session on the page.
    const { context, page } = await launchedPage();
    memory.refuseWith(401);
    try {
      await page
        .locator('article[data-draft-id="nudge-1"]')
        .getByRole('button', { name: 'Regenerate: Suggested actions' })
        .click();
      await expect.poll(() => page.locator('#error').textContent()).toBe(sentence);
      expect(await page.locator('#drafts').isVisible()).toBe(false);
      expect(await page.locator('#patient-line').isVisible()).toBe(false);
      await page.screenshot({ path: path.join(artifacts, 'review-session-ended.png') });
      await expectNoSeriousViolations(page, 'session ended');

      // Refused from the start (the page reopened after the EHR revoked the token): the same sentence.
      ehr.refusesTokens = true;
      await page.reload();
      await expect.poll(() => page.locator('#error').textContent()).toBe(sentence);
      const body = (await page.locator('body').textContent()) ?? '';
      expect(body).not.toMatch(/HTTP 401|No patient in context|GET DocumentReference/);
      expect(await page.locator('article.draft').count()).toBe(0);
    } finally {
      memory.refuseWith(undefined);
      ehr.refusesTokens = false;
      await context.close();
    }
  });

  it('refuses a callback with the wrong state', async () => {
    const { context, page } = await newPage();
    // Start a launch but stop at the authorization server, then come back with a forged state.
    await page.route(`${harness.auth.url}/**`, (route) => route.fulfill({ status: 200, body: 'stopped' }));
    await page.goto(harness.launchUrl({ patient: patientId, fhirUser: practitioner }));
    await page.unroute(`${harness.auth.url}/**`);
    const response = await page.goto(
      `${harness.serviceUrl}/smart/callback?state=forged-${'x'.repeat(40)}&code=abc`,
    );
    expect(response?.status()).toBe(401);
    expect(await response?.text()).toContain('state');
    await context.close();
  });

  for (const [name, misbehave, expected] of [
    ['an id_token for another audience', { idTokenAudience: 'someone-else' }, 'aud'],
    ['an id_token with a bad signature', { idTokenBadSignature: true }, 'signature'],
    ['an expired id_token', { idTokenExpired: true }, 'exp'],
  ] as const) {
    it(`refuses ${name}`, async () => {
      Object.assign(harness.auth.misbehave, misbehave);
      const { context, page } = await newPage();
      try {
        const response = await page.goto(harness.launchUrl({ patient: patientId, fhirUser: practitioner }));
        expect(response?.status()).toBe(401);
        expect(new URL(page.url()).pathname).toBe('/smart/callback');
        expect((await response?.text())?.toLowerCase()).toContain(expected);
        // No session was created: the API still refuses.
        expect((await pageFetch(page, '/api/drafts')).status).toBe(401);
      } finally {
        Object.assign(harness.auth.misbehave, {
          idTokenAudience: undefined,
          idTokenBadSignature: false,
          idTokenExpired: false,
        });
        await context.close();
      }
    });
  }
});
