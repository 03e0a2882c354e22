import { type MaterialItem, packChunks } from '../material.ts';
import { ContextBudgetError } from '../model-errors.ts';
import { type Fact, factsSchemas } from '../output-schemas.ts';
import { renderPrompt } from '../prompt-library.ts';
import { structuredCall } from '../structured-call.ts';
import { citingOnly, factsPerChunk, type StageContext } from './stage-context.ts';

/**
 * Step 3, extract (the map of map-reduce): the material is packed into chunks that each fit one call,
 * and facts are extracted from every chunk, each citing `[Type/id]` of what that chunk showed
 * (decoding is constrained to those citations, and code keeps only them).
 */
export async function extractFacts(
  context: StageContext,
  input: { material: MaterialItem[]; goal: string; focus: string },
): Promise<Fact[]> {
  const template = context.prompts.get('fact-extraction');
  const focus = input.focus ? `Focus: ${input.focus.replace(/[\r\n]+/g, ' ')}` : '';
  const overhead =
    context.countTokens(renderPrompt(template, { goal: input.goal, focus, maxFacts: 10, material: '' })) + 16;
  const capacity = context.budget.promptCapacity(context.maxTokens) - overhead;
  if (capacity < 200) throw new ContextBudgetError('The context is too small for fact extraction');
  const chunks = packChunks(input.material, capacity, context.countTokens);
  const maxFacts = factsPerChunk(context, chunks.length);
  const facts: Fact[] = [];
  for (const chunk of chunks) {
    context.signal?.throwIfAborted();
    const { schema, jsonSchema } = factsSchemas(chunk.references, maxFacts, context.limits);
    const value = await structuredCall({
      model: context.chatModel,
      prompt: renderPrompt(template, {
        goal: input.goal,
        focus,
        maxFacts,
        material: chunk.items.map((item) => item.text).join('\n\n'),
      }),
      schema,
      jsonSchema,
      schemaName: 'facts',
      maxTokens: context.maxTokens,
      signal: context.signal,
    });
    facts.push(...citingOnly(value.facts, chunk.references));
  }
  return facts;
}
