import type { z } from 'zod';
import { type ChatMessage, countPromptTokens, type ModelProvider } from '../src/model/provider.ts';
import { hasOnlyFiniteNumbers, type JsonSchemaObject } from './grammar-schema.ts';
import type { RunBudget } from './run-budget.ts';

/**
 * One model call whose answer must be JSON of a given shape: constrained at decoding time by the
 * JSON schema, validated with zod, and repaired once by quoting the validation error back to the
 * model. A second failure ends the step cleanly with an error instead of guessing.
 */
export class InvalidModelOutputError extends Error {
  readonly isRetryable = false;
  readonly code = 'invalid-model-output';

  constructor(message: string) {
    super(message);
    this.name = 'InvalidModelOutputError';
  }
}

export class ContextBudgetError extends Error {
  readonly isRetryable = false;
  readonly code = 'context-overflow';

  constructor(message: string) {
    super(message);
    this.name = 'ContextBudgetError';
  }
}

export interface StructuredCallOptions<Output> {
  provider: ModelProvider;
  budget: RunBudget;
  messages: ChatMessage[];
  schema: z.ZodType<Output>;
  jsonSchema: JsonSchemaObject;
  schemaName: string;
  maxTokens: number;
  temperature: number;
  signal?: AbortSignal;
  /** Checks zod cannot express (for example that a tool's arguments fit that tool). */
  refine?: (value: Output) => string | undefined;
}

export interface StructuredCallResult<Output> {
  value: Output;
  /** The raw text of the accepted answer, to replay as the model's turn. */
  raw: string;
  repaired: boolean;
}

function describeProblem<Output>(
  text: string,
  options: StructuredCallOptions<Output>,
): { value?: Output; problem?: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { problem: 'The reply is not valid JSON.' };
  }
  if (!hasOnlyFiniteNumbers(parsed)) return { problem: 'The reply contains a number that is not finite.' };
  const result = options.schema.safeParse(parsed);
  if (!result.success) {
    const issues = result.error.issues
      .slice(0, 5)
      .map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`)
      .join('; ');
    return { problem: `The reply does not follow the schema: ${issues}` };
  }
  const refinement = options.refine?.(result.data);
  if (refinement) return { problem: refinement };
  return { value: result.data };
}

/** Checks prompt + output against the context before calling: a silent context shift would drop the instructions. */
export function checkFitsContext(
  provider: ModelProvider,
  budget: RunBudget,
  messages: ChatMessage[],
  maxTokens: number,
): number {
  const promptTokens = countPromptTokens(provider, messages);
  const limit = provider.contextSize - budget.limits.safetyMarginTokens;
  if (promptTokens + maxTokens > limit) {
    throw new ContextBudgetError(
      `A call of ${promptTokens} prompt tokens and ${maxTokens} output tokens would not fit the context of ${provider.contextSize}`,
    );
  }
  return promptTokens;
}

async function callOnce(options: StructuredCallOptions<unknown>, messages: ChatMessage[]): Promise<string> {
  const promptTokens = checkFitsContext(options.provider, options.budget, messages, options.maxTokens);
  options.budget.reserveModelCall(promptTokens, options.maxTokens);
  const result = await options.provider.generate({
    messages,
    jsonSchema: options.jsonSchema,
    schemaName: options.schemaName,
    maxTokens: options.maxTokens,
    temperature: options.temperature,
    signal: options.signal,
  });
  options.budget.record(result.usage);
  return result.content;
}

export async function structuredCall<Output>(
  options: StructuredCallOptions<Output>,
): Promise<StructuredCallResult<Output>> {
  const first = await callOnce(options as StructuredCallOptions<unknown>, options.messages);
  const firstCheck = describeProblem(first, options);
  if (firstCheck.value !== undefined) return { value: firstCheck.value, raw: first, repaired: false };
  const repairMessages = repairTurns(options, first, firstCheck.problem ?? 'The reply is invalid.');
  if (!repairMessages) {
    throw new InvalidModelOutputError(
      `The model's ${options.schemaName} reply was invalid and no repair fits: ${firstCheck.problem}`,
    );
  }
  const second = await callOnce(options as StructuredCallOptions<unknown>, repairMessages);
  const secondCheck = describeProblem(second, options);
  if (secondCheck.value !== undefined) return { value: secondCheck.value, raw: second, repaired: true };
  throw new InvalidModelOutputError(
    `The model's ${options.schemaName} reply was invalid twice: ${secondCheck.problem}`,
  );
}

/**
 * The repair turns: the invalid reply (cut to what fits the context) and the problem. The original
 * prompt may already fill most of the context, so the echo shrinks first, then goes.
 */
function repairTurns<Output>(
  options: StructuredCallOptions<Output>,
  reply: string,
  problem: string,
): ChatMessage[] | undefined {
  const request: ChatMessage = {
    role: 'user',
    content: `${problem} Reply again with only one JSON object that follows the required schema.`,
  };
  const base = countPromptTokens(options.provider, [...options.messages, request]);
  const free =
    options.provider.contextSize - options.budget.limits.safetyMarginTokens - options.maxTokens - base - 8;
  if (free < 0) return undefined;
  let echo = reply.slice(0, 2000);
  while (echo && options.provider.countTokens(echo) > free) echo = echo.slice(0, Math.floor(echo.length / 2));
  return [...options.messages, { role: 'assistant', content: echo || '(invalid reply omitted)' }, request];
}
