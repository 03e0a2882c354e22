import { HumanMessage } from '@langchain/core/messages';
import { createAgent, modelCallLimitMiddleware, toolStrategy } from 'langchain';
import { z } from 'zod';
import type { ClinicalNote, PatientRecord } from '../../fhir/patient-record.ts';
import type { DraftModel } from '../draft-model.ts';
import type { DraftPlan } from '../draft-plan.ts';
import {
  type NavigationEnd,
  NavigationMeter,
  navigationGuardMiddleware,
} from '../langchain/navigation-middleware.ts';
import { createLangChainRecordTools } from '../langchain/record-tools.ts';
import type { PromptLibrary } from '../prompt-library.ts';
import { renderPrompt } from '../prompt-library.ts';
import type { Manifest } from '../record-manifest.ts';
import type { RunBudget } from '../run-budget.ts';

/**
 * Step 1, navigate: a LangChain agent (createAgent) reads the record through the read-only tools bound
 * to the event's patient, starting from code's manifest, and ends by naming its reading list (a
 * structured response) or by running into a bound. Tool calls go through whichever chat model the
 * draft uses: constrained JSON for MedGemma, native tool calls for a model that has them.
 */
export const readingListToolName = 'reading_list';
export const maximumReadingList = 24;

const readingListSchema = z
  .object({
    read: z.array(z.string().max(80)).max(maximumReadingList),
    focus: z.string().max(300),
  })
  .meta({
    title: readingListToolName,
    description:
      'Ends reading: the notes or resources (Type/id) whose details the summary needs, and its focus in one sentence.',
  });

/**
 * LangChain wraps what a middleware's model call threw in a MiddlewareError: the pipeline and the
 * fallback decide on the model's own error (its code, status and `isRetryable`), so it is unwrapped.
 */
function unwrapMiddlewareError(error: unknown): unknown {
  let current = error;
  while (
    current instanceof Error &&
    (current as { '~brand'?: string })['~brand'] === 'MiddlewareError' &&
    current.cause !== undefined
  ) {
    current = current.cause;
  }
  return current;
}

export interface Navigation {
  /** Notes or resources (`Type/id`) the model named; anything outside this patient's record is ignored later. */
  readingList: string[];
  /** What the write-up should focus on, in the model's words (not shown to clinicians). */
  focus: string;
  /** Notes the model read with read_note: they join the material facts are extracted from. */
  notesRead: ClinicalNote[];
  /** Every `Type/id` a tool showed the model: citable in this run. */
  shown: Set<string>;
  ended: NavigationEnd;
  steps: number;
}

interface NavigateInput {
  model: DraftModel;
  budget: RunBudget;
  prompts: PromptLibrary;
  record: PatientRecord;
  manifest: Manifest;
  plan: DraftPlan;
  goal: string;
  signal?: AbortSignal;
}

export async function navigate(input: NavigateInput): Promise<Navigation> {
  const { budget, model, plan } = input;
  const limits = budget.limits;
  const navigation: Navigation = {
    readingList: [],
    focus: '',
    notesRead: [],
    shown: new Set(),
    ended: 'step-limit',
    steps: 0,
  };
  let endedByGuard: NavigationEnd | undefined;
  const tools = createLangChainRecordTools(input.record, {
    manifestText: () => input.manifest.text,
    maxNoteTokens: Math.max(
      200,
      Math.min(Math.floor(model.contextSize / 6), Math.floor(plan.navigationAllowance / 2)),
    ),
    countTokens: (text) => model.countTokens(text),
    onResult: (result) => {
      for (const reference of result.references) navigation.shown.add(reference);
      navigation.notesRead.push(...result.notesRead);
    },
  });
  // A record over the ceiling gets one navigation step (its reading list), so model calls stay at
  // most the number of chunks plus two; smaller records may navigate within the allowance.
  const maxSteps = plan.large ? Math.min(1, limits.maxSteps) : limits.maxSteps;
  const meter = new NavigationMeter(budget, plan.navigationAllowance);
  const agent = createAgent({
    model: model.createChatModel({
      meter,
      maxTokens: Math.min(limits.maxOutputTokens, 512),
      temperature: limits.temperature,
    }),
    tools,
    responseFormat: toolStrategy(readingListSchema),
    middleware: [
      modelCallLimitMiddleware({ runLimit: maxSteps, exitBehavior: 'end' }),
      navigationGuardMiddleware({
        budget,
        readingListTool: readingListToolName,
        onStep: () => {
          navigation.steps += 1;
          meter.beginStep();
        },
        onEnd: (reason) => {
          endedByGuard = reason;
        },
      }),
    ],
  });
  const prompt = renderPrompt(input.prompts.get('record-navigator'), {
    goal: input.goal,
    readingListTool: readingListToolName,
    manifest: input.manifest.text,
    maxReads: maximumReadingList,
    maxSteps,
  });
  let state: Awaited<ReturnType<typeof agent.invoke>>;
  try {
    state = await agent.invoke(
      { messages: [new HumanMessage(prompt)] },
      // The step limit ends the loop; the graph's own recursion limit must never be what stops it.
      { signal: input.signal, recursionLimit: 10 * (maxSteps + 2) },
    );
  } catch (error) {
    throw unwrapMiddlewareError(error);
  }
  const reading = state.structuredResponse as z.infer<typeof readingListSchema> | undefined;
  if (reading) {
    navigation.readingList = reading.read;
    navigation.focus = reading.focus;
    navigation.ended = 'reading-list';
  } else if (endedByGuard) {
    navigation.ended = endedByGuard;
  } else if (navigation.steps < maxSteps) {
    // The model answered without naming a reading list.
    navigation.ended = 'no-reading-list';
  }
  return navigation;
}
