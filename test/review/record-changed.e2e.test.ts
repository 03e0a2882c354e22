import type { DocumentReference, Encounter, Observation, Patient, Practitioner } from 'fhir/r4.js';
import type { Browser, Page } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { inlineNoteText } from '../../fhir/note-text.ts';
import type { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import { type ReviewHarness, startSandboxReviewHarness } from './review-harness.ts';

/**
 * Stale drafts as the clinician sees them (issue 12, item 8), on real parts: the pipeline drafting into the
 * sandbox EHR, the real lifecycle behind the drafts API, and Chromium. A draft refreshed for a later version of
 * its encounter says "updated <time>"; a draft the clinician edited in the page is kept when the encounter
 * changes again, and the page says that the record changed since, and what changed.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';

let sandbox: SandboxEhr;
let serviceClient: FhirClient;
let harness: ReviewHarness;
let browser: Browser;
let store: SqliteDraftStore;
let patient: Patient;
const practitioner: Practitioner = {
  resourceType: 'Practitioner',
  id: 'sbx-refresh-reviewer',
  name: [{ family: 'Reviewer' }],
};
let runs = 0;

async function runJob(encounterId: string): Promise<string> {
  return processEncounterJob(
    {
      id: `job-${++runs}`,
      encounterId,
      source: 'test',
      status: 'running',
      attempts: 1,
      createdAt: new Date().toISOString(),
      runAt: new Date().toISOString(),
    },
    {
      fhir: serviceClient,
      engine: createExtractiveEngine(),
      writer: new DraftNoteWriter(serviceClient, identifierSystem, { store }),
      triggers: { finished: 'progress-summary' },
      draftIdentifierSystem: identifierSystem,
      logger: silentLogger(),
    },
  );
}

function visit(id: string): Encounter {
  return {
    resourceType: 'Encounter',
    id,
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    type: [{ text: 'Office visit' }],
    subject: { reference: `Patient/${patient.id}` },
    period: { start: '2026-11-20T09:00:00Z', end: '2026-11-20T09:30:00Z' },
  };
}

async function draftOf(encounterId: string): Promise<DocumentReference> {
  const documents = await serviceClient.search<DocumentReference>('DocumentReference', {
    encounter: `Encounter/${encounterId}`,
  });
  const drafts = documents.filter((document) =>
    document.identifier?.some((identifier) => identifier.system === identifierSystem),
  );
  expect(drafts).toHaveLength(1);
  return drafts[0];
}

/** Runs fetch inside the page (same origin, with its cookie), as the page's own script would. */
function pageFetch(page: Page, pathName: string) {
  return page.evaluate(async (pathName) => {
    const context = new URLSearchParams(window.location.search).get('context') ?? '';
    const response = await fetch(pathName, { headers: { 'x-launch-context': context } });
    return response.json();
  }, pathName);
}

describe.skipIf(!hasChromium)('the review app on drafts whose record changed', () => {
  beforeAll(async () => {
    sandbox = createSandboxEhr();
    const [chart] = generatePatients({ count: 1, seed: 20261207 });
    await sandbox.seed([...chart.resources, practitioner]);
    patient = chart.resources.find((resource) => resource.resourceType === 'Patient') as Patient;

    ({ harness, store, serviceClient } = await startSandboxReviewHarness(sandbox, { identifierSystem }));
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await harness?.close();
    await store?.close();
    await sandbox?.close();
  });

  it('shows "updated" on a refreshed draft, and what changed on a draft the clinician edited', async () => {
    const refreshedVisit = visit('record-changed-visit-1');
    const editedVisit = visit('record-changed-visit-2');
    await sandbox.seed([refreshedVisit, editedVisit]);
    expect(await runJob(refreshedVisit.id as string)).toBe('draft-created');
    expect(await runJob(editedVisit.id as string)).toBe('draft-created');
    const refreshed = await draftOf(refreshedVisit.id as string);
    const edited = await draftOf(editedVisit.id as string);

    // Discharge codes the first visit before anyone opened its draft: the draft is rewritten in place.
    await sandbox.seed([{ ...refreshedVisit, reasonCode: [{ text: 'Low back pain' }] }]);
    expect(await runJob(refreshedVisit.id as string)).toBe('draft-refreshed');

    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(
      harness.launchUrl({ patient: patient.id as string, fhirUser: `Practitioner/${practitioner.id}` }),
    );
    const refreshedArticle = page.locator(`article[data-draft-id="${refreshed.id}"]`);
    const editedArticle = page.locator(`article[data-draft-id="${edited.id}"]`);
    await refreshedArticle.waitFor();
    expect(await refreshedArticle.locator('.draft-meta').textContent()).toMatch(/ · updated \S/);
    expect(await refreshedArticle.locator('.draft-text').textContent()).toContain('Low back pain');
    expect(await editedArticle.locator('.draft-meta').textContent()).not.toContain('updated');

    // The clinician edits the second draft in the page.
    const clinicianText = `${inlineNoteText(edited)}\nReviewed with the patient.`;
    await editedArticle.getByRole('button', { name: /^Edit text/ }).click();
    await editedArticle.getByRole('textbox', { name: /^Edit text/ }).fill(clinicianText);
    await editedArticle.getByRole('button', { name: 'Save edit' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Edit saved');

    // Then a result arrives and the visit is coded: the edited draft is kept, and the change noted.
    const result = (await sandbox.repository.createResource({
      resourceType: 'Observation',
      status: 'final',
      subject: { reference: `Patient/${patient.id}` },
      code: { text: 'Hemoglobin A1c' },
      valueQuantity: { value: 7.9, unit: '%' },
      effectiveDateTime: new Date().toISOString(),
    } as never)) as unknown as Observation;
    await sandbox.seed([{ ...editedVisit, reasonCode: [{ text: 'Diabetes follow-up' }] }]);
    expect(await runJob(editedVisit.id as string)).toBe('record-change-noted');
    expect(inlineNoteText(await draftOf(editedVisit.id as string))).toBe(clinicianText);

    // The draft cites the first visit too, which changed since (its discharge coding above).
    const sentence =
      'The record changed since this draft was written: 1 new result, 1 updated other visit, encounter updated.';
    const { drafts } = await pageFetch(page, '/api/drafts');
    const listedRefreshed = drafts.find((draft: { id: string }) => draft.id === refreshed.id);
    const listedEdited = drafts.find((draft: { id: string }) => draft.id === edited.id);
    expect(Date.parse(listedRefreshed.updatedAt)).not.toBeNaN();
    expect(listedRefreshed.recordChanged).toBeUndefined();
    expect(listedEdited.updatedAt).toBeUndefined();
    expect(listedEdited.recordChanged).toMatchObject({
      summary: sentence,
      added: [`Observation/${result.id}/_history/${result.meta?.versionId}`],
      changed: [expect.stringMatching(/^Encounter\/record-changed-visit-1\/_history\//)],
    });
    const { draft: single } = await pageFetch(page, `/api/drafts/${edited.id}`);
    expect(single.recordChanged.summary).toBe(sentence);

    await page.reload();
    await editedArticle.waitFor();
    expect(await editedArticle.locator('.record-changed').textContent()).toBe(sentence);
    expect(await editedArticle.locator('.record-changed').getAttribute('role')).toBe('note');
    expect(await editedArticle.locator('.draft-text').textContent()).toContain('Reviewed with the patient.');
    expect(await refreshedArticle.locator('.record-changed').count()).toBe(0);
    await context.close();
  });
});
