import { z } from 'zod';
import { checkJsonReply, zodToGrammarSchema } from '../../agents/grammar-schema.ts';
import { type PromptLibrary, renderPrompt } from '../../agents/prompt-library.ts';
import type { Logger } from '../log.ts';
import type { ModelProvider } from '../model/provider.ts';
import type { FollowUpQuestion } from './questionnaire-response.ts';
import type { RecordLists } from './record-lists.ts';

/**
 * Adaptive follow-up questions: with a model configured, it reads the answers so far and a short summary of
 * the record, and proposes up to N questions (diabetes in the record and foot pain as the concern: wounds on
 * the feet). The answers reach the model as quoted data: JSON inside tags, with `<`, `>` and `&` escaped so
 * an answer cannot close the tag it sits in, and the prompt says plainly that nothing in them is an
 * instruction. What comes back is checked like any model output (schema, length, count) and stripped of markup;
 * a failing model costs only the follow-ups: the base questionnaire's own branching still serves.
 */
const followUpSchema = z.object({
  questions: z
    .array(
      z.object({
        text: z.string().min(1).max(200),
        type: z.enum(['boolean', 'text']),
      }),
    )
    .max(5),
});

const followUpJsonSchema = zodToGrammarSchema(followUpSchema, { maxStringLength: 200 });

const followUpPromptId = 'intake-follow-up';

/** JSON whose text cannot close a surrounding tag or open a new one. */
function quotedData(value: unknown): string {
  return JSON.stringify(value, null, 1)
    .replace(/</g, '\\u003c')
    .replace(/>/g, '\\u003e')
    .replace(/&/g, '\\u0026');
}

/** A generated question as plain text: no markup, no control characters, one line. */
function plainQuestion(text: string): string {
  return text
    .replace(/[\p{Cc}\u200b-\u200f\u2028-\u202e]/gu, ' ')
    .replace(/[<>{}[\]`*_#|\\]/g, '')
    .replace(/\s+/g, ' ')
    .trim();
}

export interface FollowUpRequest {
  /** Each question asked so far with the patient's answer, as text. */
  answered: { question: string; answer: string }[];
  record: RecordLists;
  language: string;
  maxQuestions: number;
}

export async function generateFollowUps(
  request: FollowUpRequest,
  options: { provider: ModelProvider; prompts: PromptLibrary; logger: Logger; maxTokens?: number },
): Promise<FollowUpQuestion[]> {
  if (request.maxQuestions === 0) return [];
  const prompt = renderPrompt(options.prompts.get(followUpPromptId), {
    maxQuestions: request.maxQuestions,
    language: request.language,
    record: quotedData({
      problems: request.record.problems,
      medications: request.record.medications,
      allergies: request.record.allergies,
    }),
    answers: quotedData(request.answered),
  });
  let reply: string;
  try {
    const result = await options.provider.generate({
      messages: [{ role: 'user', content: prompt }],
      jsonSchema: followUpJsonSchema,
      schemaName: 'intake_follow_ups',
      maxTokens: options.maxTokens ?? 600,
      temperature: 0,
    });
    reply = result.content;
  } catch (error) {
    // The model's error text may echo the prompt: only its name is logged.
    options.logger.warn({ error: (error as Error).name }, 'intake-follow-ups-unavailable');
    return [];
  }
  const checked = checkJsonReply(reply, followUpSchema);
  if (checked.value === undefined) {
    options.logger.warn({ problem: 'invalid-reply' }, 'intake-follow-ups-unavailable');
    return [];
  }
  const asked = new Set(request.answered.map((entry) => entry.question.toLowerCase()));
  const questions: FollowUpQuestion[] = [];
  for (const question of checked.value.questions) {
    const text = plainQuestion(question.text);
    if (text.length < 5 || asked.has(text.toLowerCase())) continue;
    asked.add(text.toLowerCase());
    questions.push({ linkId: `follow-up-${questions.length + 1}`, text, type: question.type });
    if (questions.length >= request.maxQuestions) break;
  }
  return questions;
}
