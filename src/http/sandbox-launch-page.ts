import { parseSearchRequest } from '@medplum/core';
import express, { type Router } from 'express';
import type { Communication, DocumentReference, Encounter, Patient } from 'fhir/r4.js';
import { isFhirId } from '../../fhir/fhir-id.ts';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import type { SandboxEhr } from '../sandbox/sandbox-ehr.ts';

/**
 * The sandbox EHR's own patient list (`GET /sandbox/launch`): what a clinician sees in a hospital's EHR before
 * opening the review app from a chart. Each recent encounter has an "Open the review app" link that performs a
 * real SMART EHR launch: the sandbox's authorization server records a launch context (patient, encounter, the
 * seeded clinician) and the browser goes to the app's launch URL with `iss` and `launch`, exactly as an EHR
 * sends it. Loaded only in sandbox mode; the page is server-rendered with every value escaped.
 */
export interface SandboxLaunchPageOptions {
  sandbox: SandboxEhr;
  fhirBaseUrl: string;
  /** The review app's SMART launch URL (`<publicUrl>/smart/launch`). */
  appLaunchUrl: string;
  /** Records an EHR launch context in the sandbox's authorization server; returns the opaque `launch` value. */
  createLaunch: (context: { patientId: string; encounterId: string }) => Promise<string>;
  draftIdentifierSystem: string;
  /** Pre-visit intake's identifier system, when it is on: each booked visit shows its invitation's link. */
  intakeIdentifierSystem?: string;
  /** How many encounters each patient lists (newest first). */
  encountersPerPatient?: number;
  now?: () => Date;
}

export function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

function patientName(patient: Patient): string {
  const name = patient.name?.find((candidate) => candidate.use === 'official') ?? patient.name?.[0];
  if (!name) return `Patient ${patient.id}`;
  return name.text ?? [...(name.given ?? []), name.family].filter(Boolean).join(' ');
}

function ageInYears(birthDate: string | undefined, now: Date): number | undefined {
  if (!birthDate) return undefined;
  const born = new Date(birthDate);
  if (Number.isNaN(born.getTime())) return undefined;
  let age = now.getUTCFullYear() - born.getUTCFullYear();
  const beforeBirthday =
    now.getUTCMonth() < born.getUTCMonth() ||
    (now.getUTCMonth() === born.getUTCMonth() && now.getUTCDate() < born.getUTCDate());
  if (beforeBirthday) age -= 1;
  return age;
}

function encounterLabel(encounter: Encounter): string {
  const type =
    encounter.type?.[0]?.text ??
    encounter.type?.[0]?.coding?.[0]?.display ??
    encounter.class?.display ??
    encounter.class?.code ??
    'Encounter';
  return type;
}

function encounterDate(encounter: Encounter): string {
  return (encounter.period?.start ?? encounter.meta?.lastUpdated ?? '').slice(0, 10) || 'no date';
}

function page(body: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Sandbox EHR: launch the review app</title>
<style>
body { font-family: system-ui, sans-serif; margin: 0 auto; max-width: 60rem; padding: 1rem 1.5rem; color: #1b1b1b; line-height: 1.45; }
.notice { background: #fff4d6; border: 1px solid #b88a00; padding: 0.6rem 0.9rem; border-radius: 4px; }
.patient { border-top: 1px solid #ccc; padding: 0.8rem 0; }
.patient h2 { font-size: 1.15rem; margin: 0 0 0.2rem; }
.meta { color: #4a4a4a; margin: 0 0 0.4rem; }
.waiting { font-weight: 600; color: #7a3e00; }
ul { margin: 0; padding-left: 1.2rem; }
li { margin: 0.2rem 0; }
a { color: #0b4f9c; }
a:focus { outline: 3px solid #0b4f9c; outline-offset: 2px; }
.visually-hidden { position: absolute; width: 1px; height: 1px; overflow: hidden; clip: rect(0 0 0 0); white-space: nowrap; }
</style>
</head>
<body>
<main>
${body}
</main>
</body>
</html>`;
}

export function sandboxLaunchRouter(options: SandboxLaunchPageOptions): Router {
  const router = express.Router();
  const now = options.now ?? (() => new Date());
  const repository = options.sandbox.repository;
  const perPatient = options.encountersPerPatient ?? 5;
  // The sandbox engine's own types are Medplum's; the page reads them as the R4 types the rest of the code uses.
  const search = async <T>(query: string) =>
    (await repository.searchResources(parseSearchRequest(query))) as unknown as T[];

  router.get('/', async (_request, response) => {
    const patients = await search<Patient>('Patient?_count=200');
    // Filtered here rather than by search parameters: the sandbox engine's token search on a bare system is not
    // one to rely on, and the list is small.
    const drafts = (await search<DocumentReference>('DocumentReference?_count=1000')).filter(
      (document) =>
        document.docStatus === 'preliminary' &&
        document.identifier?.some((identifier) => identifier.system === options.draftIdentifierSystem),
    );
    const waitingByPatient = new Map<string, number>();
    for (const draft of drafts) {
      if (draft.status === 'entered-in-error') continue;
      const patientId = draft.subject?.reference?.split('/').pop();
      if (patientId) waitingByPatient.set(patientId, (waitingByPatient.get(patientId) ?? 0) + 1);
    }
    // The link each booked visit's invitation carries, as the patient would receive it from the portal.
    const invitationLinks = new Map<string, string>();
    if (options.intakeIdentifierSystem) {
      const system = `${options.intakeIdentifierSystem}/invitation`;
      for (const invitation of await search<Communication>('Communication?_count=1000')) {
        const encounter = invitation.encounter?.reference?.split('/').pop();
        const link = invitation.payload?.find((payload) => payload.contentAttachment?.url)?.contentAttachment
          ?.url;
        if (encounter && link && invitation.identifier?.some((identifier) => identifier.system === system))
          invitationLinks.set(encounter, link);
      }
    }
    const sections: string[] = [];
    for (const patient of patients.sort((left, right) => String(left.id).localeCompare(String(right.id)))) {
      const encounters = await search<Encounter>(
        `Encounter?subject=Patient/${patient.id}&_sort=-date&_count=${perPatient}`,
      );
      const age = ageInYears(patient.birthDate, now());
      const waiting = waitingByPatient.get(patient.id as string) ?? 0;
      const items = encounters.slice(0, perPatient).map((encounter) => {
        const href = `launch/open?patient=${encodeURIComponent(patient.id as string)}&encounter=${encodeURIComponent(encounter.id as string)}`;
        const invitation = invitationLinks.get(encounter.id as string);
        const intake = invitation
          ? ` &middot; <a href="${escapeHtml(invitation)}">The patient's pre-visit questions<span class="visually-hidden"> for the ${escapeHtml(encounterDate(encounter))} visit</span></a>`
          : '';
        return `<li>${escapeHtml(encounterDate(encounter))} &middot; ${escapeHtml(encounterLabel(encounter))} (${escapeHtml(encounter.status)}) &middot; <a href="${escapeHtml(href)}">Open the review app<span class="visually-hidden"> for this ${escapeHtml(encounterDate(encounter))} visit</span></a>${intake}</li>`;
      });
      sections.push(`<section class="patient" aria-labelledby="patient-${escapeHtml(patient.id as string)}">
<h2 id="patient-${escapeHtml(patient.id as string)}">${escapeHtml(patientName(patient))}</h2>
<p class="meta">${age === undefined ? 'age unknown' : `${age} years`}${patient.gender ? `, ${escapeHtml(patient.gender)}` : ''} &middot; ${waiting > 0 ? `<span class="waiting">${waiting} draft${waiting === 1 ? '' : 's'} waiting for review</span>` : 'no drafts waiting'}</p>
${items.length > 0 ? `<ul>${items.join('\n')}</ul>` : '<p class="meta">No encounters.</p>'}
</section>`);
    }
    response
      .set({
        'content-security-policy':
          "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
        'cache-control': 'no-store',
        'x-content-type-options': 'nosniff',
      })
      .type('html')
      .send(
        page(`<h1>Sandbox EHR: patients</h1>
<p class="notice"><strong>Sandbox.</strong> These are SYNTHETIC patients made up by the service's generator, not real people.
Opening the review app performs a real SMART EHR launch as the sandbox's clinician.</p>
${sections.join('\n')}`),
      );
  });

  // A GET that starts a launch, as an EHR's "open app" button does: the launch context lives only in the
  // authorization server; the URL carries the opaque launch id and the FHIR base, nothing else.
  router.get('/open', async (request, response) => {
    const patientId = String(request.query.patient ?? '');
    const encounterId = String(request.query.encounter ?? '');
    if (!isFhirId(patientId) || !isFhirId(encounterId))
      throw outcomeError('invalid', 'patient and encounter must be FHIR ids', 400);
    const encounter = (await repository.readResource('Encounter', encounterId).catch(() => undefined)) as
      | Encounter
      | undefined;
    if (!encounter || encounter.subject?.reference !== `Patient/${patientId}`)
      throw outcomeError('not-found', 'no such encounter for this patient', 404);
    const launch = await options.createLaunch({ patientId, encounterId });
    const target = new URL(options.appLaunchUrl);
    target.searchParams.set('iss', options.fhirBaseUrl);
    target.searchParams.set('launch', launch);
    response.redirect(303, target.toString());
  });
  return router;
}
