import type { Communication, Patient, QuestionnaireResponse } from 'fhir/r4.js';
import type { Browser } from 'playwright-core';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { RunningService } from '../../src/service.ts';
import { expectNoSeriousViolations } from '../support/axe.ts';
import { hasChromium, launchChromium } from '../support/chromium.ts';
import {
  type ChatCompletionRequestBody,
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
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
 * The adaptive path end to end, in Spanish: the service runs with a remote model (a scripted OpenAI-compatible
 * server standing in for MedGemma on vLLM), the patient's record lists diabetes, the patient prefers Spanish
 * (Patient.communication). After the base questions the model is asked for follow-ups with the answers and the
 * record as quoted data; it asks about wounds on the feet; the question and its answer are in the
 * QuestionnaireResponse with the question's own text. The draft calls get no valid answer from the scripted
 * server, so the briefing comes from the extractive fallback, which still cites the answers.
 */
const woundQuestion = '¿Tiene alguna herida, llaga o ampolla en los pies?';

function scriptedModel(body: ChatCompletionRequestBody) {
  if (body.response_format?.json_schema?.name !== 'intake_follow_ups') return { content: 'not json' };
  const prompt = body.messages.map((message) => message.content).join('\n');
  // Chosen from the record and the answers, as MedGemma would: diabetes plus foot pain asks about wounds.
  const questions =
    /diabetes/i.test(prompt) && /pie/i.test(prompt)
      ? [
          { text: woundQuestion, type: 'boolean' },
          { text: '¿Cómo controla su azúcar en casa?', type: 'text' },
        ]
      : [];
  return { content: JSON.stringify({ questions }) };
}

describe.skipIf(!hasChromium)('pre-visit intake in the browser (adaptive path, Spanish)', () => {
  let model: ScriptedInferenceServer;
  let service: RunningService;
  let fhir: FhirClient;
  let browser: Browser;

  beforeAll(async () => {
    model = await startScriptedInferenceServer([], scriptedModel);
    ({ service, fhir } = await startIntakeService({
      EHR_AGENT_MODEL__PROVIDER: 'remote',
      EHR_AGENT_MODEL__REMOTE__ENDPOINT_URL: model.url,
      EHR_AGENT_MODEL__PROFILE: 'medgemma-4b',
    }));
    browser = await launchChromium();
  }, 120_000);

  afterAll(async () => {
    await browser?.close();
    await service?.close();
    await model?.close();
  });

  it('asks the model for follow-ups from the answers and the record, and keeps them with their text', async () => {
    const patientId = await patientWithDiabetes(fhir);
    const patient = await fhir.read<Patient>('Patient', patientId);
    await fhir.update<Patient>({
      ...patient,
      communication: [
        { language: { coding: [{ system: 'urn:ietf:bcp:47', code: 'es-MX' }] }, preferred: true },
      ],
    });
    const visit = await bookVisit(fhir, patientId);
    const invitation = await waitFor<Communication>(
      () => invitationFor(fhir, visit.id as string),
      'the invitation',
    );
    expect(invitation.language).toBe('es');
    expect(invitation.payload?.[0]?.contentString).toMatch(/^Por favor, responda unas preguntas/);

    const page = await browser.newPage();
    await page.goto(linkOf(invitation));
    expect(await page.locator('html').getAttribute('lang')).toBe('es');
    expect(await page.locator('h1').textContent()).toBe('Antes de su cita');
    await expectNoSeriousViolations(page, 'Spanish first page');
    await page.fill('#answer-concern', 'Dolor en el pie derecho desde hace dos semanas');
    await page.check('#answer-onset-2');
    await page.check('#answer-severity-1');
    await page.check('#answer-pain-1');
    await page.check('#answer-takes-medicines-1');
    await page.check('#answer-has-allergies-1');
    await page.check('#answer-chest-pain-1');
    await page.check('#answer-short-of-breath-1');
    await page.check('#answer-self-harm-1');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);

    // No base question is left (every yes/no was no): the page asks the model's follow-ups.
    expect(await page.locator('main').textContent()).toContain(woundQuestion);
    await expectNoSeriousViolations(page, 'follow-up page');
    await page.check('#answer-follow-up-1-0');
    await page.fill('#answer-follow-up-2', 'Con un glucómetro, dos veces al día');
    await Promise.all([page.waitForNavigation(), page.click('button[type=submit]')]);
    expect(await page.locator('h1').textContent()).toBe('Gracias');
    await page.close();

    // The model was asked once, with the record and the answers as quoted data, and in the patient's language.
    const followUpCalls = model.requests.filter(
      (request) => request.body.response_format?.json_schema?.name === 'intake_follow_ups',
    );
    expect(followUpCalls).toHaveLength(1);
    const prompt = followUpCalls[0]?.body.messages.map((message) => message.content).join('\n') ?? '';
    expect(prompt).toMatch(/<record-summary>[\s\S]*Diabetes[\s\S]*<\/record-summary>/);
    expect(prompt).toMatch(/<patient-answers>[\s\S]*Dolor en el pie derecho[\s\S]*<\/patient-answers>/);
    expect(prompt).toContain('language with code "es"');

    const response = (await answersFor(fhir, visit.id as string)) as QuestionnaireResponse;
    expect(response.language).toBe('es');
    const followUp = response.item?.find((item) => item.linkId === 'follow-up-1');
    expect(followUp).toMatchObject({ text: woundQuestion, answer: [{ valueBoolean: true }] });
    expect(followUp?.extension?.[0]?.valueBoolean).toBe(true);
    expect(response.item?.find((item) => item.linkId === 'concern')?.text).toBe(
      '¿Cuál es el motivo principal de su visita?',
    );

    const briefing = await waitFor(
      () => briefingCiting(fhir, visit.id as string, `[QuestionnaireResponse/${response.id}]`),
      'the briefing citing the answers',
    );
    expect(briefing).toContain(`${woundQuestion} (follow-up question): "yes"`);
  }, 240_000);
});
