import { z } from 'zod';
import { dropNulls, type JsonSchemaObject, zodToGrammarSchema } from './grammar-schema.ts';
import type { RecordTool } from './record-tools.ts';

/**
 * MedGemma has no tool tokens, so a tool call is a JSON object constrained at decoding time:
 * `{"action":"call","tool":...,"args":{...}}` or `{"action":"final",...}`. The root is a plain
 * object with every property required (what strict `json_schema` servers and the grammar both
 * accept); which arguments fit which tool is also checked after decoding with the tool's own zod schema.
 */
export const maximumReadingList = 24;

export interface CallStep {
  action: 'call';
  tool: string;
  args: Record<string, unknown>;
}

export interface FinalStep {
  action: 'final';
  /** Notes or resources (`Type/id`) the model wants facts extracted from. */
  read: string[];
  /** What the write-up should focus on, in the model's words (not shown to clinicians). */
  focus: string;
}

export type NavigationStep = CallStep | FinalStep;

export interface StepProtocol {
  schema: z.ZodType<NavigationStep>;
  jsonSchema: JsonSchemaObject;
  /** Checks the arguments against the chosen tool's schema; returns the problem, if any. */
  checkArguments(step: NavigationStep): string | undefined;
  tools: Map<string, RecordTool>;
}

const stepShape = z.object({
  action: z.enum(['call', 'final']),
  tool: z.string(),
  args: z.record(z.string(), z.unknown()),
  read: z.array(z.string().max(100)).max(maximumReadingList),
  focus: z.string().max(400),
});

/**
 * 'precise': one alternative per tool (a root `oneOf`), for node-llama-cpp's grammar. 'flat': a plain
 * root object, for servers whose `json_schema` support wants one (whether vLLM and TGI accept a root
 * `oneOf` is unverified); there, arguments are matched to the tool only after decoding.
 */
export type StepSchemaStyle = 'precise' | 'flat';

export function createStepProtocol(
  tools: RecordTool[],
  options: { maxStringLength: number; style?: StepSchemaStyle },
): StepProtocol {
  const toolNames = tools.map((tool) => tool.name);
  const byName = new Map(tools.map((tool) => [tool.name, tool]));
  const schema = z
    .preprocess(
      dropNulls,
      stepShape.extend({ tool: z.enum(['none', ...toolNames] as [string, ...string[]]) }),
    )
    .transform(
      (step): NavigationStep =>
        step.action === 'call'
          ? { action: 'call', tool: step.tool, args: step.args }
          : { action: 'final', read: step.read, focus: step.focus },
    ) as unknown as z.ZodType<NavigationStep>;
  const argumentSchemas = tools.map((tool) => zodToGrammarSchema(tool.schema, options));
  const read = { type: 'array', items: { type: 'string', maxLength: 80 }, maxItems: maximumReadingList };
  const focus = { type: 'string', maxLength: Math.min(300, options.maxStringLength) };
  const required = ['action', 'tool', 'args', 'read', 'focus'];
  const jsonSchema: JsonSchemaObject =
    options.style === 'flat'
      ? {
          type: 'object',
          properties: {
            action: { enum: ['call', 'final'] },
            tool: { enum: [...toolNames, 'none'] },
            args: argumentSchemas.length === 1 ? argumentSchemas[0] : { oneOf: argumentSchemas },
            read,
            focus,
          },
          required,
          additionalProperties: false,
        }
      : {
          // One alternative per tool, so decoding itself keeps each tool's arguments to that tool.
          oneOf: [
            ...tools.map((tool, index) => ({
              type: 'object',
              properties: {
                action: { const: 'call' },
                tool: { const: tool.name },
                args: argumentSchemas[index],
                read: { type: 'array', items: { type: 'string' }, maxItems: 0 },
                focus: { type: 'string', maxLength: 0 },
              },
              required,
              additionalProperties: false,
            })),
            {
              type: 'object',
              properties: {
                action: { const: 'final' },
                tool: { const: 'none' },
                args: { type: 'object', properties: {}, additionalProperties: false },
                read,
                focus,
              },
              required,
              additionalProperties: false,
            },
          ],
        };
  return {
    schema,
    jsonSchema,
    tools: byName,
    checkArguments(step) {
      if (step.action !== 'call') return undefined;
      const tool = byName.get(step.tool);
      if (!tool) return `"tool" must be one of ${toolNames.join(', ')} when "action" is "call".`;
      const result = tool.schema.safeParse(dropNulls(step.args));
      if (result.success) return undefined;
      const issues = result.error.issues
        .slice(0, 4)
        .map((issue) => `${issue.path.join('.') || 'args'}: ${issue.message}`)
        .join('; ');
      return `The arguments do not fit ${tool.name}: ${issues}`;
    },
  };
}

/** How the protocol is explained to the model, inside the first user turn. */
export function describeTools(tools: RecordTool[]): string {
  return tools
    .map((tool) => {
      const shape = z.toJSONSchema(tool.schema) as {
        properties?: Record<string, { type?: string; enum?: unknown[] }>;
        required?: string[];
      };
      const fields = Object.entries(shape.properties ?? {})
        .map(([name, property]) => {
          const optional = shape.required?.includes(name) ? '' : ' (optional, or null)';
          const type = property.enum ? property.enum.join('|') : (property.type ?? 'value');
          return `${name}: ${type}${optional}`;
        })
        .join(', ');
      return `- ${tool.name}(${fields}): ${tool.description}`;
    })
    .join('\n');
}
