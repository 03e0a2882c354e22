import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Flag, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { createLogger } from '../../src/log.ts';
import { loadQuestionnaires } from '../../src/patient-intake/questionnaire.ts';
import { type RunningService, startService } from '../../src/service.ts';
import {
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
 * The interview's doors without a browser: answers capped, the sealed state bound to its link, oversized forms
 * refused, rate limits per link and per address, no secret no start against a real EHR, a questionnaire the page
 * cannot ask refused at start, and nothing of the patient's (token, answers, name) in the log.
 */
function formState(html: string): string {
  const state = /name="state" value="([^"]+)"/.exec(html)?.[1];
  if (!state) throw new Error('the page has no form state');
  return state;
}

function post(link: string, fields: Record<string, string>): Promise<Response> {
  return fetch(link, {
    method: 'POST',
    headers: { 'content-type': 'application/x-www-form-urlencoded' },
    body: new URLSearchParams(fields).toString(),
  });
}

const firstPage = {
  'answer-concern': 'Cough for a week',
  'answer-onset': 'days',
  'answer-severity': 'mild',
  'answer-pain': 'no',
  'answer-takes-medicines': 'no',
  'answer-has-allergies': 'no',
  'answer-chest-pain': 'no',
  'answer-short-of-breath': 'no',
  'answer-self-harm': 'no',
};

describe('the interview over HTTP', () => {
  let service: RunningService;
  let fhir: FhirClient;
  const logLines: string[] = [];

  beforeAll(async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'patient-intake-http-'));
    const config = loadConfig({
      env: {
        PORT: '0',
        DATA_DIR: dataDir,
        EHR_AGENT_SANDBOX__PATIENTS: '3',
        EHR_AGENT_QUEUE__POLL_INTERVAL_MS: '50',
        EHR_AGENT_PATIENT_INTAKE__RATE_LIMIT__PER_LINK_PER_MINUTE: '9',
      },
      cwd: dataDir,
    });
    const destination = new Writable({
      write(chunk, _encoding, callback) {
        logLines.push(String(chunk));
        callback();
      },
    });
    service = await startService(config, createLogger({ level: 'debug', destination }));
    fhir = new FhirClient({ baseUrl: service.fhirBaseUrl });
  }, 120_000);

  afterAll(async () => {
    await service?.close();
  });

  async function invitedLink(): Promise<{ link: string; encounterId: string; patientId: string }> {
    const [patient] = await fhir.search<Patient>('Patient', { _count: 1 });
    const visit = await bookVisit(fhir, patient?.id as string);
    const invitation = await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation');
    return { link: linkOf(invitation), encounterId: visit.id as string, patientId: patient?.id as string };
  }

  it('caps answers, binds the state to its link, and keeps the token and answers out of the log', async () => {
    const { link, encounterId, patientId } = await invitedLink();
    const page = await fetch(link);
    expect(page.headers.get('cache-control')).toBe('no-store');
    expect(page.headers.get('referrer-policy')).toBe('no-referrer');
    expect(page.headers.get('content-security-policy')).toContain("default-src 'none'");
    const html = await page.text();
    // By default the page shows nothing from the record.
    expect(html).not.toContain('your record lists');
    const state = formState(html);

    // Over the cap (500 characters): the page asks again, nothing is written.
    const tooLong = await post(link, { ...firstPage, 'answer-concern': 'x'.repeat(501), state });
    expect(tooLong.status).toBe(200);
    expect(await tooLong.text()).toContain('This answer is too long');
    // An option the question does not offer is refused the same way.
    const unknownOption = await post(link, { ...firstPage, 'answer-severity': 'catastrophic', state });
    expect(await unknownOption.text()).toContain('Please choose one of the answers offered');
    expect(await answersFor(fhir, encounterId)).toBeUndefined();

    // A state sealed for another link is refused as forged.
    const other = await invitedLink();
    const otherState = formState(await (await fetch(other.link)).text());
    const crossed = await post(link, { ...firstPage, state: otherState });
    expect(crossed.status).toBe(404);
    // A state altered by hand too.
    const altered = await post(link, { ...firstPage, state: `${state.slice(0, -4)}AAAA` });
    expect(altered.status).toBe(404);

    // A form far over any real page is refused with a plain page, before any work.
    const huge = await post(link, { ...firstPage, state, padding: 'p'.repeat(70_000) });
    expect(huge.status).toBe(413);
    expect(huge.headers.get('content-type')).toContain('text/html');

    const done = await post(link, { ...firstPage, state });
    expect(await done.text()).toContain('Your answers have been sent');
    expect((await answersFor(fhir, encounterId))?.item?.[0]?.answer?.[0]?.valueString).toBe(
      'Cough for a week',
    );
    // Submitting the same page again finds the answers already in the EHR.
    const again = await post(link, { ...firstPage, state });
    expect(again.status).toBe(410);

    const log = logLines.join('');
    expect(log).toContain('intake-answers-written');
    const token = link.slice(link.lastIndexOf('/') + 1);
    expect(log).not.toContain(token.slice(0, 40));
    expect(log).not.toContain('Cough for a week');
    const patient = await fhir.read<Patient>('Patient', patientId);
    for (const name of patient.name?.flatMap((entry) => [entry.family, ...(entry.given ?? [])]) ?? [])
      if (name) expect(log).not.toContain(name);
  }, 120_000);

  it('records a soon answer for the care team: a Flag, the briefing and the CDS urgency card', async () => {
    const { link, encounterId, patientId } = await invitedLink();
    const state = formState(await (await fetch(link)).text());
    const done = await post(link, { ...firstPage, 'answer-severity': 'severe', state });
    expect(await done.text()).toContain('Your care team may contact you before your visit');
    const flags = await fhir.search<Flag>('Flag', { patient: `Patient/${patientId}` });
    const flag = flags.find((candidate) => candidate.encounter?.reference === `Encounter/${encounterId}`);
    expect(flag?.code?.coding?.[0]?.code).toBe('soon-intake-answer');
    expect(flag?.code?.text).toContain('The patient rates the problem as severe');
    const briefing = await waitFor(
      () => briefingCiting(fhir, encounterId, `[Flag/${flag?.id}]`),
      'the briefing citing the flag',
    );
    expect(briefing).toMatch(
      /- Soon: Pre-visit intake answer to see soon: The patient rates the problem as severe/,
    );
    const start = await fetch(`${service.url}/cds-services/guideline-nudges-encounter-start`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        hook: 'encounter-start',
        hookInstance: 'c3b4d5e6-0000-4000-8000-000000000003',
        context: { userId: 'Practitioner/sbx-clinician', patientId, encounterId },
      }),
    });
    const { cards } = (await start.json()) as {
      cards: { indicator: string; summary: string; detail?: string }[];
    };
    const urgency = cards.find((card) => card.summary.startsWith('Visit urgency:'));
    expect(urgency?.detail).toContain('Pre-visit intake answer to see soon');
  }, 60_000);

  it("shows each booked visit's invitation link on the sandbox's launch page", async () => {
    const { link } = await invitedLink();
    const launchPage = await (await fetch(`${service.url}/sandbox/launch`)).text();
    expect(launchPage).toContain(`<a href="${link}">The patient's pre-visit questions`);
  }, 60_000);

  it('limits requests per link', async () => {
    const { link } = await invitedLink();
    const statuses: number[] = [];
    for (let attempt = 0; attempt < 11; attempt++) statuses.push((await fetch(link)).status);
    expect(statuses.slice(0, 9).every((status) => status === 200)).toBe(true);
    const limited = statuses.slice(9);
    expect(limited).toEqual([429, 429]);
  }, 60_000);
});

describe('a site that allows the record lists, and limits per address', () => {
  let service: RunningService;
  let fhir: FhirClient;

  beforeAll(async () => {
    ({ service, fhir } = await startIntakeService({
      EHR_AGENT_PATIENT_INTAKE__RATE_LIMIT__PER_ADDRESS_PER_MINUTE: '5',
      EHR_AGENT_PATIENT_INTAKE__SHOW_RECORD_LISTS: 'true',
    }));
  }, 120_000);

  afterAll(async () => {
    await service?.close();
  });

  it("shows the record's medications for the patient to confirm", async () => {
    const patientId = await patientWithDiabetes(fhir);
    const visit = await bookVisit(fhir, patientId);
    const link = linkOf(await waitFor(() => invitationFor(fhir, visit.id as string), 'the invitation'));
    const html = await (await fetch(link)).text();
    expect(html).toContain('Medicines your record lists');
    expect(html).toMatch(/<li>metformin[^<]*<\/li>/);
  }, 60_000);

  it('refuses a client that tries many links', async () => {
    {
      const statuses: number[] = [];
      // Guessed links: each one different, so only the per-address limit can stop them.
      for (let attempt = 0; attempt < 7; attempt++)
        statuses.push((await fetch(`${service.url}/intake/guessed-link-${attempt}`)).status);
      // Five a minute from this address, one of them spent on the page above.
      expect(statuses).toEqual([404, 404, 404, 404, 429, 429, 429]);
    }
  }, 60_000);
});

describe('start-up checks', () => {
  it('refuses to start against a real EHR without a link secret', () => {
    expect(() =>
      loadConfig({
        env: {
          FHIR_BASE_URL: 'https://ehr.example/fhir',
          NOTIFY_SECRET: 'notify-secret-0123456789',
          EHR_AGENT_PATIENT_INTAKE__ENABLED: 'true',
        },
      }),
    ).toThrow(/patientIntake\.secret/);
    expect(() =>
      loadConfig({
        env: {
          FHIR_BASE_URL: 'https://ehr.example/fhir',
          NOTIFY_SECRET: 'notify-secret-0123456789',
          EHR_AGENT_PATIENT_INTAKE__ENABLED: 'true',
          EHR_AGENT_PATIENT_INTAKE__SECRET: 'a-link-secret-of-at-least-32-characters',
        },
      }),
    ).not.toThrow();
  });

  it('refuses a questionnaire the page cannot ask, naming the file', () => {
    const directory = mkdtempSync(path.join(tmpdir(), 'intake-questionnaire-'));
    const questionnaire = {
      resourceType: 'Questionnaire',
      url: 'urn:example:q',
      version: '1',
      status: 'active',
      language: 'en',
      title: 'Before your visit',
      item: [
        {
          linkId: 'detail',
          text: 'Tell us more',
          type: 'text',
          enableWhen: [{ question: 'later', operator: '=', answerBoolean: true }],
        },
        { linkId: 'later', text: 'Asked later', type: 'boolean' },
      ],
    };
    writeFileSync(path.join(directory, 'questionnaire.en.json'), JSON.stringify(questionnaire));
    expect(() => loadQuestionnaires(directory, 'en')).toThrow(
      /questionnaire\.en\.json: detail: enableWhen names later, not an earlier question/,
    );
    // Another language asking other questions is refused too.
    questionnaire.item = [{ linkId: 'later', text: 'Asked later', type: 'boolean' }] as never;
    writeFileSync(path.join(directory, 'questionnaire.en.json'), JSON.stringify(questionnaire));
    writeFileSync(
      path.join(directory, 'questionnaire.es.json'),
      JSON.stringify({
        ...questionnaire,
        language: 'es',
        item: [{ linkId: 'otra', text: 'Otra', type: 'boolean' }],
      }),
    );
    expect(() => loadQuestionnaires(directory, 'en')).toThrow(/asks other questions/);
  });
});
