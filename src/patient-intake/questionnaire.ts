import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import type { Patient } from 'fhir/r4.js';
import { z } from 'zod';

/**
 * The base questionnaire the informatics team edits: one FHIR Questionnaire per language in the intake folder
 * (`questionnaire.en.json`, `questionnaire.es.json`). Only what the interview page can ask is accepted (flat
 * items of type string, text, boolean, choice, integer, display; enableWhen on earlier answers), checked at
 * start with the file named, and every language must ask the same questions (same linkIds and types), so the
 * answers mean the same whatever language they were given in.
 */
const codingSchema = z.object({
  system: z.string().optional(),
  code: z.string().min(1),
  display: z.string().min(1),
});

const enableWhenSchema = z
  .object({
    question: z.string().min(1),
    operator: z.enum(['exists', '=', '!=']),
    answerBoolean: z.boolean().optional(),
    answerCoding: z.object({ system: z.string().optional(), code: z.string().min(1) }).optional(),
    answerString: z.string().optional(),
    answerInteger: z.number().int().optional(),
  })
  .refine(
    (condition) =>
      [
        condition.answerBoolean,
        condition.answerCoding,
        condition.answerString,
        condition.answerInteger,
      ].filter((answer) => answer !== undefined).length === 1,
    'an enableWhen needs exactly one answer[x]',
  );

const itemSchema = z.object({
  linkId: z.string().regex(/^[a-z0-9][a-z0-9-]{0,63}$/, 'lower-case letters, digits and dashes'),
  text: z.string().min(1).max(500),
  type: z.enum(['string', 'text', 'boolean', 'choice', 'integer', 'display']),
  required: z.boolean().optional(),
  maxLength: z.number().int().positive().optional(),
  answerOption: z.array(z.object({ valueCoding: codingSchema })).optional(),
  enableWhen: z.array(enableWhenSchema).optional(),
  enableBehavior: z.enum(['all', 'any']).optional(),
});

const questionnaireSchema = z.object({
  resourceType: z.literal('Questionnaire'),
  url: z.url(),
  version: z.string().min(1),
  status: z.enum(['draft', 'active', 'retired', 'unknown']),
  language: z.string().regex(/^[a-z]{2}$/),
  title: z.string().min(1),
  item: z.array(itemSchema).min(1),
});

export type IntakeQuestionnaire = z.infer<typeof questionnaireSchema>;
export type QuestionnaireItem = z.infer<typeof itemSchema>;
export type EnableWhen = z.infer<typeof enableWhenSchema>;

/** One answer as the interview holds it: what the patient chose or typed. */
export type AnswerValue =
  | { kind: 'boolean'; value: boolean }
  | { kind: 'integer'; value: number }
  | { kind: 'string'; value: string }
  | { kind: 'coding'; value: { system?: string; code: string; display: string } };

export type Answers = Record<string, AnswerValue>;

export class QuestionnaireSet {
  readonly byLanguage: ReadonlyMap<string, IntakeQuestionnaire>;
  readonly defaultLanguage: string;

  constructor(questionnaires: IntakeQuestionnaire[], defaultLanguage: string) {
    this.byLanguage = new Map(questionnaires.map((questionnaire) => [questionnaire.language, questionnaire]));
    if (!this.byLanguage.has(defaultLanguage))
      throw new Error(`no questionnaire.${defaultLanguage}.json for the default language ${defaultLanguage}`);
    this.defaultLanguage = defaultLanguage;
  }

  /** The patient's preferred language when there is a questionnaire in it, else the default. */
  languageFor(patient: Patient | undefined): string {
    const spoken = [...(patient?.communication ?? [])].sort(
      (left, right) => Number(right.preferred === true) - Number(left.preferred === true),
    );
    for (const communication of spoken) {
      for (const coding of communication.language?.coding ?? []) {
        const language = coding.code?.toLowerCase().split('-')[0];
        if (language && this.byLanguage.has(language)) return language;
      }
    }
    return this.defaultLanguage;
  }

  get(language: string): IntakeQuestionnaire {
    return (
      this.byLanguage.get(language) ?? (this.byLanguage.get(this.defaultLanguage) as IntakeQuestionnaire)
    );
  }
}

/** Reads and checks every questionnaire.<language>.json of the folder; throws naming the file at fault. */
export function loadQuestionnaires(directory: string, defaultLanguage: string): QuestionnaireSet {
  const files = readdirSync(directory).filter((name) => /^questionnaire\.[a-z]{2}\.json$/.test(name));
  if (files.length === 0) throw new Error(`${directory}: no questionnaire.<language>.json`);
  const questionnaires = files.map((name) => {
    const file = path.join(directory, name);
    const parsed = questionnaireSchema.safeParse(JSON.parse(readFileSync(file, 'utf8')));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new Error(`${file}: ${issue?.path.join('.')}: ${issue?.message}`);
    }
    if (`questionnaire.${parsed.data.language}.json` !== name)
      throw new Error(`${file}: language ${parsed.data.language} does not match the file name`);
    checkStructure(parsed.data, file);
    return parsed.data;
  });
  const [reference] = questionnaires;
  for (const questionnaire of questionnaires.slice(1)) {
    const shape = (q: IntakeQuestionnaire) => q.item.map((item) => `${item.linkId}:${item.type}`).join(',');
    if (shape(questionnaire) !== shape(reference) || questionnaire.url !== reference.url)
      throw new Error(
        `${directory}: questionnaire.${questionnaire.language}.json asks other questions than questionnaire.${reference.language}.json (same url, linkIds and types required)`,
      );
  }
  return new QuestionnaireSet(questionnaires, defaultLanguage);
}

function checkStructure(questionnaire: IntakeQuestionnaire, file: string): void {
  const seen = new Map<string, QuestionnaireItem>();
  for (const item of questionnaire.item) {
    if (seen.has(item.linkId)) throw new Error(`${file}: linkId ${item.linkId} appears twice`);
    if (item.linkId.startsWith('follow-up-'))
      throw new Error(`${file}: linkId ${item.linkId}: follow-up- is kept for generated questions`);
    if (item.type === 'choice' && !item.answerOption?.length)
      throw new Error(`${file}: ${item.linkId}: a choice needs answerOption`);
    for (const condition of item.enableWhen ?? []) {
      // Only earlier questions: the page asks in order, so a later one could never have been answered.
      if (!seen.has(condition.question))
        throw new Error(
          `${file}: ${item.linkId}: enableWhen names ${condition.question}, not an earlier question`,
        );
    }
    seen.set(item.linkId, item);
  }
}

function conditionHolds(condition: EnableWhen, answers: Answers): boolean {
  const answer = answers[condition.question];
  if (condition.operator === 'exists') return (answer !== undefined) === (condition.answerBoolean ?? true);
  if (!answer) return condition.operator === '!=';
  let equal: boolean;
  if (condition.answerBoolean !== undefined)
    equal = answer.kind === 'boolean' && answer.value === condition.answerBoolean;
  else if (condition.answerInteger !== undefined)
    equal = answer.kind === 'integer' && answer.value === condition.answerInteger;
  else if (condition.answerString !== undefined)
    equal = answer.kind === 'string' && answer.value === condition.answerString;
  else
    equal =
      answer.kind === 'coding' &&
      answer.value.code === condition.answerCoding?.code &&
      (condition.answerCoding?.system === undefined || answer.value.system === condition.answerCoding.system);
  return condition.operator === '=' ? equal : !equal;
}

/** FHIR enableWhen: enabled without conditions; with them, all (default) or any must hold. */
export function isEnabled(item: QuestionnaireItem, answers: Answers): boolean {
  const conditions = item.enableWhen ?? [];
  if (conditions.length === 0) return true;
  const results = conditions.map((condition) => conditionHolds(condition, answers));
  return item.enableBehavior === 'any' ? results.some(Boolean) : results.every(Boolean);
}
