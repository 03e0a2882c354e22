import { mkdirSync } from 'node:fs';
import path from 'node:path';
import type {
  Condition,
  DocumentReference,
  Encounter,
  FhirResource,
  Observation,
  Patient,
  Practitioner,
  Provenance,
} from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { type DraftContent, DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import { type ReviewHarness, startSandboxReviewHarness } from './review-harness.ts';

/**
 * The whole review path on real parts: drafts written by the service's DraftNoteWriter into the sandbox EHR
 * (mounted on the service app at /sandbox/fhir, seeded with the project's synthetic patients), the SMART launch through the strict test authorization server (which proxies FHIR calls only with a
 * valid user token), the real draft lifecycle acting with the clinician's token, and Chromium clicking
 * through the page. Afterwards the chart itself is checked: final with authenticator and a sign-off Provenance,
 * or entered-in-error with a rejection Provenance.
 */
const artifacts = path.resolve('test/artifacts');
const identifierSystem = 'urn:ehr-draft-agent:draft';

let sandbox: SandboxEhr;
/** The service's own access to the sandbox (no token), for writing drafts and checking the chart. */
let serviceClient: FhirClient;
let harness: ReviewHarness;
let browser: Browser;
let store: SqliteDraftStore;
let patient: Patient;
let otherPatient: Patient;
let practitioner: Practitioner;
let observation: Observation;
let observationValue: string;
let summaryDraft: DocumentReference;
let briefingDraft: DocumentReference;
let otherPatientDraft: DocumentReference;
let heldDraftId: string;
let heldEncounterId: string;
const regenerationRequests: { encounterId: string; kind: string }[] = [];

function content(kind: string, title: string, text: string, sources: string[]): DraftContent {
  return {
    kind,
    title,
    text,
    engine: { id: 'extractive', version: '1.0.0' },
    sources: new Map(sources.map((source) => [source, '1'])),
    verification: { cited: sources.length, removed: 0, flagged: false },
  };
}

async function provenanceFor(documentId: string): Promise<Provenance[]> {
  const all = await serviceClient.search<Provenance>('Provenance', { _count: 500 });
  return all.filter((provenance) =>
    provenance.target.some((target) => target.reference?.startsWith(`DocumentReference/${documentId}`)),
  );
}

function first<T extends FhirResource>(
  resources: FhirResource[],
  test: (resource: FhirResource) => boolean,
): T {
  const found = resources.find(test);
  if (!found) throw new Error('the synthetic patient lacks a resource this test needs');
  return found as T;
}

describe.skipIf(!hasChromium)('review on the real lifecycle and the sandbox EHR', () => {
  beforeAll(async () => {
    mkdirSync(artifacts, { recursive: true });
    sandbox = createSandboxEhr();
    const [chart, otherChart] = generatePatients({ count: 2, seed: 20261127 });
    practitioner = { resourceType: 'Practitioner', id: 'sbx-reviewer', name: [{ family: 'Reviewer' }] };
    await sandbox.seed([...chart.resources, ...otherChart.resources, practitioner]);
    patient = first<Patient>(chart.resources, (resource) => resource.resourceType === 'Patient');
    otherPatient = first<Patient>(otherChart.resources, (resource) => resource.resourceType === 'Patient');
    const encounter = first<Encounter>(chart.resources, (resource) => resource.resourceType === 'Encounter');
    const otherEncounter = first<Encounter>(
      otherChart.resources,
      (resource) => resource.resourceType === 'Encounter',
    );
    observation = first<Observation>(
      chart.resources,
      (resource) => resource.resourceType === 'Observation' && resource.valueQuantity?.value !== undefined,
    );
    const condition = first<Condition>(chart.resources, (resource) => resource.resourceType === 'Condition');

    ({ harness, store, serviceClient } = await startSandboxReviewHarness(sandbox, {
      identifierSystem,
      requestRegeneration: (encounterId, kind) => {
        regenerationRequests.push({ encounterId, kind });
      },
    }));
    const writer = new DraftNoteWriter(serviceClient, identifierSystem);
    const now = new Date();
    const value = `${observation.valueQuantity?.value} ${observation.valueQuantity?.unit ?? ''}`.trim();
    observationValue = value;
    summaryDraft = (
      await writer.write(
        content(
          'progress-summary',
          'Progress summary',
          `Known condition [Condition/${condition.id}]. Latest result ${value} [Observation/${observation.id}].`,
          [`Condition/${condition.id}`, `Observation/${observation.id}`],
        ),
        patient,
        encounter,
        now,
      )
    ).draft;
    briefingDraft = (
      await writer.write(
        content('previsit-briefing', 'Pre-visit briefing', `Recheck [Observation/${observation.id}].`, [
          `Observation/${observation.id}`,
        ]),
        patient,
        encounter,
        now,
      )
    ).draft;
    otherPatientDraft = (
      await writer.write(
        content('progress-summary', 'Progress summary', 'Another patient.', []),
        otherPatient,
        otherEncounter,
        now,
      )
    ).draft;
    // A site in hold mode keeps the draft in the service's store; the EHR first sees it, final, at sign-off.
    const laterEncounter = chart.resources.filter(
      (resource) => resource.resourceType === 'Encounter',
    )[1] as Encounter;
    heldEncounterId = laterEncounter.id as string;
    const heldWriter = new DraftNoteWriter(serviceClient, identifierSystem, { mode: 'hold', store });
    heldDraftId = (
      await heldWriter.write(
        content('progress-summary', 'Held summary', `Held for sign-off [Observation/${observation.id}].`, [
          `Observation/${observation.id}`,
        ]),
        patient,
        laterEncounter,
        now,
      )
    ).draft.id as string;
    browser = await launchChromium();
  });

  afterAll(async () => {
    await browser?.close();
    await harness?.close();
    await store?.close();
    await sandbox?.close();
  });

  it('launch -> list -> citation -> edit -> sign: the note is final, authenticated, with a sign-off Provenance', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(
      harness.launchUrl({ patient: patient.id as string, fhirUser: `Practitioner/${practitioner.id}` }),
    );
    expect(new URL(page.url()).pathname).toBe('/review');
    const summary = page.locator(`article[data-draft-id="${summaryDraft.id}"]`);
    await summary.waitFor();
    await expect
      .poll(() => page.locator('#patient-line').textContent())
      .toContain(patient.name?.[0]?.family ?? '');
    expect(await page.locator('article.draft').count()).toBe(3);
    expect(await page.locator(`article[data-draft-id="${otherPatientDraft.id}"]`).count()).toBe(0);
    expect(
      await page.locator(`[data-group="briefing"] article[data-draft-id="${briefingDraft.id}"]`).count(),
    ).toBe(1);
    await expectNoSeriousViolations(page, 'list on the real lifecycle');
    await page.screenshot({ path: path.join(artifacts, 'lifecycle-list.png'), fullPage: true });

    await summary.getByRole('button', { name: `Open cited source [Observation/${observation.id}]` }).click();
    const dialog = page.getByRole('dialog');
    await expect.poll(() => dialog.locator('#citation-fields').textContent()).toContain(observationValue);
    await page.screenshot({ path: path.join(artifacts, 'lifecycle-citation.png') });
    await dialog.getByRole('button', { name: 'Close' }).click();

    await summary.getByRole('button', { name: 'Edit text: Progress summary' }).click();
    await summary
      .getByRole('textbox', { name: 'Edit text: Progress summary' })
      .fill(`Latest result ${observationValue} [Observation/${observation.id}]. Plan: intensify therapy.`);
    await summary.getByRole('button', { name: 'Save edit' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Edit saved');
    await page
      .locator(`article[data-draft-id="${summaryDraft.id}"]`)
      .getByRole('button', { name: 'Sign note: Progress summary' })
      .click();
    await page
      .getByRole('dialog', { name: 'Sign note as final?' })
      .getByRole('button', { name: 'Sign as final' })
      .click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Signed');
    expect(
      await page.locator(`article[data-draft-id="${summaryDraft.id}"] .status-badge`).textContent(),
    ).toBe('Signed');
    await page.screenshot({ path: path.join(artifacts, 'lifecycle-signed.png'), fullPage: true });

    const signed = await serviceClient.read<DocumentReference>(
      'DocumentReference',
      summaryDraft.id as string,
    );
    expect(signed.docStatus).toBe('final');
    expect(signed.authenticator?.reference).toBe(`Practitioner/${practitioner.id}`);
    expect(Buffer.from(signed.content[0].attachment.data as string, 'base64').toString('utf8')).toContain(
      'Plan: intensify therapy.',
    );
    const provenance = await provenanceFor(summaryDraft.id as string);
    const signOff = provenance.find((entry) => entry.activity?.coding?.[0]?.code === 'AU');
    expect(signOff?.agent[0].who?.reference).toBe(`Practitioner/${practitioner.id}`);
    expect(signOff?.signature?.[0]?.who?.reference).toBe(`Practitioner/${practitioner.id}`);
    // AI authorship, the edit and the sign-off are all on the record.
    expect(provenance.length).toBeGreaterThanOrEqual(3);
    // The changes went through the authorization server with the clinician's token.
    expect(
      harness.auth.fhirRequests.some(
        (request) =>
          request.method === 'PUT' && request.path.includes(`DocumentReference/${summaryDraft.id}`),
      ),
    ).toBe(true);
    await context.close();
  });

  it('reject with a reason: the note is entered-in-error with a rejection Provenance; another patient’s draft is 403', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(
      harness.launchUrl({ patient: patient.id as string, fhirUser: `Practitioner/${practitioner.id}` }),
    );
    const briefing = page.locator(`article[data-draft-id="${briefingDraft.id}"]`);
    await briefing.waitFor();
    await briefing.getByRole('button', { name: 'Reject: Pre-visit briefing' }).click();
    await page.getByRole('textbox', { name: 'Reason for rejecting (required)' }).fill('Visit was cancelled');
    await page.getByRole('dialog').getByRole('button', { name: 'Reject draft' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('rejected');
    expect(
      await page.locator(`article[data-draft-id="${briefingDraft.id}"] .status-badge`).textContent(),
    ).toBe('Rejected');

    const rejected = await serviceClient.read<DocumentReference>(
      'DocumentReference',
      briefingDraft.id as string,
    );
    expect(rejected.status).toBe('entered-in-error');
    const nullify = (await provenanceFor(briefingDraft.id as string)).find(
      (entry) => entry.activity?.coding?.[0]?.code === 'NULLIFY',
    );
    expect(nullify?.reason?.some((reason) => reason.text === 'Visit was cancelled')).toBe(true);

    const other = await page.evaluate(async (draftId) => {
      const launch = new URLSearchParams(window.location.search).get('context') ?? '';
      const response = await fetch(`/api/drafts/${draftId}`, { headers: { 'x-launch-context': launch } });
      return response.status;
    }, otherPatientDraft.id as string);
    expect(other).toBe(403);
    await context.close();
  });
  it('a held draft (hold mode): regenerate is queued; sign-off writes the final note to the EHR for the first time', async () => {
    const context = await browser.newContext({ viewport: { width: 1280, height: 800 } });
    const page = await context.newPage();
    await page.goto(
      harness.launchUrl({ patient: patient.id as string, fhirUser: `Practitioner/${practitioner.id}` }),
    );
    const held = page.locator(`article[data-draft-id="${heldDraftId}"]`);
    await held.waitFor();
    expect(await held.locator('.draft-meta').textContent()).toContain('held until signed');

    await held.getByRole('button', { name: 'Regenerate: Held summary' }).click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('new draft was requested');
    expect(regenerationRequests).toContainEqual({ encounterId: heldEncounterId, kind: 'progress-summary' });

    await page
      .locator(`article[data-draft-id="${heldDraftId}"]`)
      .getByRole('button', { name: 'Sign note: Held summary' })
      .click();
    await page
      .getByRole('dialog', { name: 'Sign note as final?' })
      .getByRole('button', { name: 'Sign as final' })
      .click();
    await expect.poll(() => page.locator('#status').textContent()).toContain('Signed');
    const stored = await store.get(heldDraftId);
    expect(stored?.status).toBe('final');
    const written = await serviceClient.read<DocumentReference>(
      'DocumentReference',
      stored?.fhirId as string,
    );
    expect(written.docStatus).toBe('final');
    expect(written.authenticator?.reference).toBe(`Practitioner/${practitioner.id}`);
    const signOff = (await provenanceFor(written.id as string)).find(
      (entry) => entry.activity?.coding?.[0]?.code === 'AU',
    );
    expect(signOff?.agent[0].who?.reference).toBe(`Practitioner/${practitioner.id}`);
    await context.close();
  });
});
