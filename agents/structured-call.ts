import { AIMessage, HumanMessage } from '@langchain/core/messages';
import type { z } from 'zod';
import type { DraftChatModel } from './draft-model.ts';
import { checkJsonReply, type JsonSchemaObject } from './grammar-schema.ts';
import { messageText } from './langchain/chat-model-base.ts';
import { ContextBudgetError, InvalidModelOutputError } from './model-errors.ts';

/**
 * A model call whose answer must be JSON of a given shape (LangChain's structured output, with our
 * schemas): constrained at decoding time by the JSON schema (the `responseFormat` every draft chat
 * model honours), validated with zod, and repaired once by quoting the validation error back to the
 * model. A second failure ends the stage with an error instead of guessing.
 */
interface StructuredCallOptions<Output> {
  model: DraftChatModel;
  /** The stage's prompt, one user turn. */
  prompt: string;
  schema: z.ZodType<Output>;
  /** Grammar-safe: what decoding is constrained to (may be stricter than zod, e.g. citation enums). */
  jsonSchema: JsonSchemaObject;
  schemaName: string;
  maxTokens: number;
  signal?: AbortSignal;
}

export async function structuredCall<Output>(options: StructuredCallOptions<Output>): Promise<Output> {
  const callOptions = {
    maxTokens: options.maxTokens,
    responseFormat: { name: options.schemaName, schema: options.jsonSchema },
    signal: options.signal,
  };
  const messages = [new HumanMessage(options.prompt)];
  const first = messageText(await options.model.invoke(messages, callOptions));
  const firstCheck = checkJsonReply(first, options.schema);
  if (firstCheck.value !== undefined) return firstCheck.value;
  const request = new HumanMessage(
    `${firstCheck.problem} Reply again with only one JSON object that follows the required schema.`,
  );
  let second: string | undefined;
  // The stage's prompt may fill most of the context: the echo of the invalid reply shrinks first, then goes.
  for (const echo of [first.slice(0, 2000), first.slice(0, 200), '(invalid reply omitted)']) {
    try {
      second = messageText(
        await options.model.invoke(
          [...messages, new AIMessage(echo || '(empty reply)'), request],
          callOptions,
        ),
      );
      break;
    } catch (error) {
      if (!(error instanceof ContextBudgetError)) throw error;
    }
  }
  if (second === undefined) {
    throw new InvalidModelOutputError(
      `The model's ${options.schemaName} reply was invalid and no repair fits: ${firstCheck.problem}`,
    );
  }
  const secondCheck = checkJsonReply(second, options.schema);
  if (secondCheck.value !== undefined) return secondCheck.value;
  throw new InvalidModelOutputError(
    `The model's ${options.schemaName} reply was invalid twice: ${secondCheck.problem}`,
  );
}
