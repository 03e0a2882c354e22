import type { BindToolsInput } from '@langchain/core/language_models/chat_models';
import { z } from 'zod';
import {
  checkJsonReply,
  describeIssues,
  dropNulls,
  type JsonSchemaObject,
  toGrammarSafe,
  zodToGrammarSchema,
} from '../grammar-schema.ts';

/**
 * How a model without native tool calling (MedGemma: no tool tokens) calls tools: every reply is one
 * JSON object, constrained at decoding time by a JSON schema and validated afterwards with zod and
 * the tool's own argument schema. It lives only inside the constrained-JSON chat model: everything
 * above it (the LangChain agent, its tools and middleware) sees ordinary tool calls.
 */
export type StepSchemaStyle = 'precise' | 'flat';

interface ToolSpec {
  name: string;
  description: string;
  /** Grammar-safe JSON schema of the arguments. */
  parameters: JsonSchemaObject;
  /** The tool's own zod schema, when it has one: arguments are checked with it after decoding. */
  schema?: z.ZodType;
}

export type Step =
  | { action: 'call'; tool: string; args: Record<string, unknown> }
  | { action: 'final'; content: string };

interface ParsedStep {
  /** Present when the reply has the step's shape (its arguments may still not fit the tool). */
  step?: Step;
  problem?: string;
}

export interface StepProtocol {
  jsonSchema: JsonSchemaObject;
  /** Placeholders of the tool-call-protocol prompt: the formats and the tools, as the model is told them. */
  promptValues: { callFormat: string; finalFormat: string; tools: string };
  parse(text: string): ParsedStep;
  /** An earlier step as the model would have written it, to replay the conversation. */
  render(step: Step): string;
}

const emptyObject: JsonSchemaObject = { type: 'object', properties: {}, additionalProperties: false };

/** LangChain tools (tool() with zod, or OpenAI-style function definitions) as grammar-safe specs. */
export function toolSpecs(tools: BindToolsInput[], maxStringLength: number): ToolSpec[] {
  return tools.map((candidate) => {
    const tool = candidate as {
      name?: string;
      description?: string;
      schema?: unknown;
      function?: { name: string; description?: string; parameters?: unknown };
    };
    if (tool.function) {
      return {
        name: tool.function.name,
        description: tool.function.description ?? '',
        parameters: toGrammarSafe(tool.function.parameters ?? emptyObject, {
          maxStringLength,
        }) as JsonSchemaObject,
      };
    }
    if (!tool.name) throw new Error('A bound tool has no name');
    if (tool.schema instanceof z.ZodType) {
      return {
        name: tool.name,
        description: tool.description ?? '',
        parameters: zodToGrammarSchema(tool.schema, { maxStringLength }),
        schema: tool.schema,
      };
    }
    return {
      name: tool.name,
      description: tool.description ?? '',
      parameters: toGrammarSafe(tool.schema ?? emptyObject, { maxStringLength }) as JsonSchemaObject,
    };
  });
}

const stepReply = z.preprocess(
  dropNulls,
  z.discriminatedUnion('action', [
    z.object({ action: z.literal('call'), tool: z.string(), args: z.record(z.string(), z.unknown()) }),
    z.object({ action: z.literal('final'), content: z.string() }),
  ]),
);

/**
 * 'precise': one alternative per tool (a root `oneOf`), so decoding itself keeps each tool's arguments
 * to that tool (node-llama-cpp's grammar). 'flat': a plain root object with every property required, for
 * servers whose `json_schema` support wants one (whether vLLM and TGI accept a root `oneOf` is
 * unverified); there, arguments are matched to the tool only after decoding.
 */
export function createStepProtocol(
  specs: ToolSpec[],
  options: { style: StepSchemaStyle; allowFinal: boolean; maxStringLength: number },
): StepProtocol {
  const byName = new Map(specs.map((spec) => [spec.name, spec]));
  const names = specs.map((spec) => spec.name);
  const contentLength = options.maxStringLength * 20;
  const flat = options.style === 'flat';
  let jsonSchema: JsonSchemaObject;
  if (flat) {
    const argumentSchemas = [
      ...specs.map((spec) => spec.parameters),
      ...(options.allowFinal ? [emptyObject] : []),
    ];
    jsonSchema = {
      type: 'object',
      properties: {
        action: { enum: options.allowFinal ? ['call', 'final'] : ['call'] },
        tool: { enum: options.allowFinal ? [...names, 'none'] : names },
        args: argumentSchemas.length === 1 ? argumentSchemas[0] : { oneOf: argumentSchemas },
        content: { type: 'string', maxLength: options.allowFinal ? contentLength : 0 },
      },
      required: ['action', 'tool', 'args', 'content'],
      additionalProperties: false,
    };
  } else {
    const alternatives: JsonSchemaObject[] = specs.map((spec) => ({
      type: 'object',
      properties: { action: { const: 'call' }, tool: { const: spec.name }, args: spec.parameters },
      required: ['action', 'tool', 'args'],
      additionalProperties: false,
    }));
    if (options.allowFinal) {
      alternatives.push({
        type: 'object',
        properties: { action: { const: 'final' }, content: { type: 'string', maxLength: contentLength } },
        required: ['action', 'content'],
        additionalProperties: false,
      });
    }
    jsonSchema = alternatives.length === 1 ? alternatives[0] : { oneOf: alternatives };
  }
  const render = (step: Step): string => {
    if (step.action === 'call') {
      return JSON.stringify(
        flat
          ? { action: 'call', tool: step.tool, args: step.args, content: '' }
          : { action: 'call', tool: step.tool, args: step.args },
      );
    }
    return JSON.stringify(
      flat
        ? { action: 'final', tool: 'none', args: {}, content: step.content }
        : { action: 'final', content: step.content },
    );
  };
  return {
    jsonSchema,
    promptValues: {
      callFormat: flat
        ? '{"action":"call","tool":"<tool name>","args":{...},"content":""}'
        : '{"action":"call","tool":"<tool name>","args":{...}}',
      finalFormat: options.allowFinal
        ? `When you have the answer: ${flat ? '{"action":"final","tool":"none","args":{},"content":"<answer>"}' : '{"action":"final","content":"<answer>"}'}`
        : 'Every reply calls one of the tools.',
      tools: specs
        .map((spec) => `- ${spec.name}: ${spec.description} Arguments: ${JSON.stringify(spec.parameters)}`)
        .join('\n'),
    },
    render,
    parse(text) {
      const shape = checkJsonReply(text, stepReply);
      if (shape.problem !== undefined) return { problem: shape.problem };
      const step = shape.value;
      if (step.action === 'final') {
        if (!options.allowFinal) return { problem: `Call one of the tools: ${names.join(', ')}.` };
        return { step };
      }
      const spec = byName.get(step.tool);
      if (!spec) return { problem: `"tool" must be one of ${names.join(', ')} when "action" is "call".` };
      const args = dropNulls(step.args) as Record<string, unknown>;
      const call: Step = { action: 'call', tool: step.tool, args };
      const checked = spec.schema?.safeParse(args);
      if (checked && !checked.success) {
        return {
          step: call,
          problem: `The arguments do not fit ${spec.name}: ${describeIssues(checked.error, 4)}`,
        };
      }
      return { step: call };
    },
  };
}
