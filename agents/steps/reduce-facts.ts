import { type Fact, factLines, factsSchemas } from '../output-schemas.ts';
import { renderPrompt } from '../prompt-library.ts';
import { structuredCall } from '../structured-call.ts';
import { citingOnly, factsPerChunk, type StageContext } from './stage-context.ts';

/**
 * Step 4, reduce: while the facts do not fit the write-up's prompt, they are merged in groups that
 * each fit one call, each merged fact citing only what its group cited. After three rounds the first
 * facts are kept (the encounter's and the chosen material come first).
 */
export async function reduceFacts(
  context: StageContext,
  input: { facts: Fact[]; goal: string; writeUpOverhead: number },
): Promise<Fact[]> {
  const { countTokens } = context;
  const available = context.budget.promptCapacity(context.maxTokens) - input.writeUpOverhead;
  const template = context.prompts.get('fact-reduction');
  const reductionOverhead =
    countTokens(renderPrompt(template, { goal: input.goal, maxFacts: 10, facts: '' })) + 16;
  const groupCapacity = context.budget.promptCapacity(context.maxTokens) - reductionOverhead;
  let facts = mergeRepeatedFacts(input.facts);
  for (let round = 0; countTokens(factLines(facts)) > available; round++) {
    if (round >= 3) {
      while (facts.length > 1 && countTokens(factLines(facts)) > available) facts = facts.slice(0, -1);
      break;
    }
    const groups: Fact[][] = [[]];
    for (const fact of facts) {
      const group = groups.at(-1)!;
      if (group.length && countTokens(factLines([...group, fact])) > groupCapacity) groups.push([fact]);
      else group.push(fact);
    }
    const maxFacts = factsPerChunk(context, groups.length);
    const reduced: Fact[] = [];
    for (const group of groups) {
      context.signal?.throwIfAborted();
      const references = [...new Set(group.flatMap((fact) => fact.citations))];
      const { schema, jsonSchema } = factsSchemas(references, maxFacts, context.limits);
      const value = await structuredCall({
        model: context.chatModel,
        prompt: renderPrompt(template, { goal: input.goal, maxFacts, facts: factLines(group) }),
        schema,
        jsonSchema,
        schemaName: 'facts',
        maxTokens: context.maxTokens,
        signal: context.signal,
      });
      reduced.push(...citingOnly(value.facts, references));
    }
    facts = reduced;
  }
  return facts;
}

const factKey = (fact: Fact) =>
  fact.fact
    .toLowerCase()
    .replace(/\s+/g, ' ')
    .replace(/[\s.;]+$/, '')
    .trim();

/**
 * The same statement read in several notes (a results line copied forward from visit to visit) is one fact citing
 * each of them: else the write-up states it once per note, and the clinician reads it three times.
 */
export function mergeRepeatedFacts(facts: readonly Fact[]): Fact[] {
  const merged = new Map<string, Fact>();
  for (const fact of facts) {
    const key = factKey(fact);
    const first = merged.get(key);
    if (first) first.citations = [...new Set([...first.citations, ...fact.citations])];
    else merged.set(key, { ...fact, citations: [...fact.citations] });
  }
  return [...merged.values()];
}
