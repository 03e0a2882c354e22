import { z } from 'zod';
import {
  type Answers,
  type AnswerValue,
  type IntakeQuestionnaire,
  isEnabled,
  type QuestionnaireItem,
} from './questionnaire.ts';
import type { FollowUpQuestion } from './questionnaire-response.ts';

/**
 * The interview as plain forms: each page asks the questions that are enabled by the answers so far and whose
 * conditions rest only on questions already asked (the Questionnaire's enableWhen, without any script in the
 * browser), then the generated follow-ups. Between pages the state travels sealed in the form, so nothing is
 * kept on the server and the patient cannot alter the questions the model asked.
 */
const answerValueSchema = z.discriminatedUnion('kind', [
  z.object({ kind: z.literal('boolean'), value: z.boolean() }),
  z.object({ kind: z.literal('integer'), value: z.number().int() }),
  z.object({ kind: z.literal('string'), value: z.string().max(2000) }),
  z.object({
    kind: z.literal('coding'),
    value: z.object({ system: z.string().optional(), code: z.string(), display: z.string() }),
  }),
]);

export const interviewStateSchema = z
  .object({
    /** The invitation's nonce: a state sealed for another link is refused. */
    nonce: z.string(),
    language: z.string().regex(/^[a-z]{2}$/),
    answers: z.record(z.string(), answerValueSchema),
    asked: z.array(z.string()).max(100),
    followUps: z.array(
      z.object({ linkId: z.string(), text: z.string().max(200), type: z.enum(['text', 'boolean']) }),
    ),
    followUpsGenerated: z.boolean(),
  })
  .strict();

export type InterviewState = z.infer<typeof interviewStateSchema>;

/** A question as a page shows it: a base item, or a generated follow-up. */
export interface AskedQuestion {
  linkId: string;
  text: string;
  type: QuestionnaireItem['type'];
  required: boolean;
  maxLength: number;
  options: { code: string; display: string; system?: string }[];
  generated: boolean;
}

export function baseQuestion(item: QuestionnaireItem, maxAnswerCharacters: number): AskedQuestion {
  return {
    linkId: item.linkId,
    text: item.text,
    type: item.type,
    required: item.required === true,
    maxLength: Math.min(item.maxLength ?? maxAnswerCharacters, maxAnswerCharacters),
    options: (item.answerOption ?? []).map((option) => option.valueCoding),
    generated: false,
  };
}

export function followUpQuestion(question: FollowUpQuestion, maxAnswerCharacters: number): AskedQuestion {
  return {
    linkId: question.linkId,
    text: question.text,
    type: question.type,
    required: false,
    maxLength: maxAnswerCharacters,
    options: [],
    generated: true,
  };
}

/** The base questions the next page asks: enabled, not yet asked, every condition on a question already asked. */
export function nextBaseItems(
  questionnaire: IntakeQuestionnaire,
  state: InterviewState,
): QuestionnaireItem[] {
  const asked = new Set(state.asked);
  return questionnaire.item.filter(
    (item) =>
      !asked.has(item.linkId) &&
      (item.enableWhen ?? []).every((condition) => asked.has(condition.question)) &&
      isEnabled(item, state.answers),
  );
}

/** Follow-ups generated but not yet asked. */
export function pendingFollowUps(state: InterviewState): FollowUpQuestion[] {
  const asked = new Set(state.asked);
  return state.followUps.filter((question) => !asked.has(question.linkId));
}

export type FieldProblem = 'required' | 'too-long' | 'invalid';

/** Control characters out (line breaks kept), surrounding space trimmed. */
function cleanText(text: string): string {
  return text
    .replace(/(?!\n)\p{Cc}/gu, '')
    .replace(/\r\n?/g, '\n')
    .trim();
}

/**
 * The answers a page's form carries for its questions, checked against each question: the right kind of value,
 * one of the offered options, within the length cap. Nothing else in the form is read.
 */
export function readAnswers(
  questions: AskedQuestion[],
  form: Record<string, unknown>,
): { answers: Answers; problems: Record<string, FieldProblem> } {
  const answers: Answers = {};
  const problems: Record<string, FieldProblem> = {};
  for (const question of questions) {
    const raw = form[`answer-${question.linkId}`];
    const text = typeof raw === 'string' ? raw : undefined;
    if (raw !== undefined && text === undefined) {
      problems[question.linkId] = 'invalid';
      continue;
    }
    const value = text === undefined ? '' : cleanText(text);
    if (value === '' || question.type === 'display') {
      if (question.required) problems[question.linkId] = 'required';
      continue;
    }
    let answer: AnswerValue | undefined;
    switch (question.type) {
      case 'boolean':
        answer =
          value === 'yes'
            ? { kind: 'boolean', value: true }
            : value === 'no'
              ? { kind: 'boolean', value: false }
              : undefined;
        break;
      case 'integer': {
        const number = /^-?\d{1,6}$/.test(value) ? Number(value) : Number.NaN;
        answer = Number.isSafeInteger(number) ? { kind: 'integer', value: number } : undefined;
        break;
      }
      case 'choice': {
        const option = question.options.find((candidate) => candidate.code === value);
        answer = option ? { kind: 'coding', value: option } : undefined;
        break;
      }
      default:
        if (value.length > question.maxLength) {
          problems[question.linkId] = 'too-long';
          continue;
        }
        answer = { kind: 'string', value };
    }
    if (answer) answers[question.linkId] = answer;
    else problems[question.linkId] = 'invalid';
  }
  return { answers, problems };
}

/** An answer in words, for the model and for the page. */
export function answerText(answer: AnswerValue): string {
  switch (answer.kind) {
    case 'boolean':
      return answer.value ? 'yes' : 'no';
    case 'integer':
      return String(answer.value);
    case 'string':
      return answer.value;
    case 'coding':
      return answer.value.display;
  }
}
