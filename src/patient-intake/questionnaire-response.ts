import type { QuestionnaireResponse, QuestionnaireResponseItemAnswer } from 'fhir/r4.js';
import { appointmentExtensionUrl } from '../../agents/intake-answers.ts';
import type { Answers, AnswerValue, IntakeQuestionnaire } from './questionnaire.ts';

/**
 * The patient's answers as a QuestionnaireResponse: completed, about the patient, for the visit, authored by
 * the patient, each answer under the linkId and text of the question actually asked (in the patient's
 * language), generated follow-up questions included with their own text. Its identifier is derived from the
 * visit, so the conditional create that writes it makes the link one-time: a second submission finds the first.
 */
export interface FollowUpQuestion {
  /** `follow-up-1`...: never a base questionnaire linkId (the loader refuses that prefix there). */
  linkId: string;
  text: string;
  type: 'text' | 'boolean';
}

/** `visitKey`: `Encounter/<id>` or `Appointment/<id>`, the resource the link was bound to. */
function responseIdentifier(identifierSystem: string, visitKey: string) {
  return { system: `${identifierSystem}/response`, value: visitKey };
}

/** The search that finds the answers already given for this visit (the conditional create's If-None-Exist). */
export function responseSearch(identifierSystem: string, visitKey: string): string {
  const identifier = responseIdentifier(identifierSystem, visitKey);
  return new URLSearchParams({ identifier: `${identifier.system}|${identifier.value}` }).toString();
}

/**
 * The Appointment the answers were given for. R4 has no element for it on a QuestionnaireResponse (`encounter`
 * is Reference(Encounter) only, `basedOn` CarePlan or ServiceRequest, `partOf` Observation or Procedure), so
 * it goes in this extension (the briefing reads it back); `encounter` is set as well once an Encounter names the
 * Appointment.
 */
export { appointmentExtensionUrl };

/** Marks the questions the model generated, so a reader can tell them from the site's own. */
const generatedQuestionExtension = 'urn:ehr-draft-agent:patient-intake:generated-question';

function answerOf(value: AnswerValue): QuestionnaireResponseItemAnswer {
  switch (value.kind) {
    case 'boolean':
      return { valueBoolean: value.value };
    case 'integer':
      return { valueInteger: value.value };
    case 'string':
      return { valueString: value.value };
    case 'coding':
      return { valueCoding: value.value };
  }
}

export function buildQuestionnaireResponse(options: {
  questionnaire: IntakeQuestionnaire;
  followUps: FollowUpQuestion[];
  answers: Answers;
  patientId: string;
  /** The link's visit key (`Encounter/<id>` or `Appointment/<id>`): the identifier that makes it one-time. */
  visitKey: string;
  /** The visit's Encounter, when there is one yet. */
  encounterId?: string;
  appointmentId?: string;
  identifierSystem: string;
  authored: Date;
}): QuestionnaireResponse {
  const patient = { reference: `Patient/${options.patientId}` };
  const base = options.questionnaire.item
    .filter((item) => item.type !== 'display' && options.answers[item.linkId] !== undefined)
    .map((item) => ({
      linkId: item.linkId,
      text: item.text,
      answer: [answerOf(options.answers[item.linkId] as AnswerValue)],
    }));
  const generated = options.followUps
    .filter((question) => options.answers[question.linkId] !== undefined)
    .map((question) => ({
      extension: [{ url: generatedQuestionExtension, valueBoolean: true }],
      linkId: question.linkId,
      text: question.text,
      answer: [answerOf(options.answers[question.linkId] as AnswerValue)],
    }));
  return {
    resourceType: 'QuestionnaireResponse',
    ...(options.appointmentId
      ? {
          extension: [
            {
              url: appointmentExtensionUrl,
              valueReference: { reference: `Appointment/${options.appointmentId}` },
            },
          ],
        }
      : {}),
    language: options.questionnaire.language,
    identifier: responseIdentifier(options.identifierSystem, options.visitKey),
    questionnaire: `${options.questionnaire.url}|${options.questionnaire.version}`,
    status: 'completed',
    subject: patient,
    ...(options.encounterId ? { encounter: { reference: `Encounter/${options.encounterId}` } } : {}),
    authored: options.authored.toISOString(),
    author: patient,
    source: patient,
    item: [...base, ...generated],
  };
}
