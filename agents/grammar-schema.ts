import { z } from 'zod';

/**
 * zod 4 -> JSON Schema -> what constrained decoding accepts. node-llama-cpp's JSON-schema grammar
 * silently ignores `$schema`, `default`, `pattern`, `minimum`, `maximum`, turns `anyOf` (what
 * `.nullable()` and unions emit) into `null`, forces unknown formats to "", and lets strings run on.
 * So: drop annotations, rewrite `anyOf` to `oneOf`, drop formats, cap every string, and re-validate
 * the output with the original zod schema afterwards (numbers with `Number.isFinite`).
 */
export type JsonSchemaObject = Record<string, unknown>;

const droppedKeys = new Set([
  '$schema',
  '$id',
  'default',
  'pattern',
  'minimum',
  'maximum',
  'exclusiveMinimum',
  'exclusiveMaximum',
  'multipleOf',
  'format',
  'examples',
  'title',
  'propertyNames',
]);

export function toGrammarSafe(schema: unknown, options: { maxStringLength: number }): unknown {
  if (Array.isArray(schema)) return schema.map((item) => toGrammarSafe(item, options));
  if (schema === null || typeof schema !== 'object') return schema;
  const result: JsonSchemaObject = {};
  for (const [key, value] of Object.entries(schema as JsonSchemaObject)) {
    if (droppedKeys.has(key)) continue;
    if (key === 'anyOf') result.oneOf = toGrammarSafe(value, options);
    else if (key === 'properties' && value && typeof value === 'object') {
      result.properties = Object.fromEntries(
        Object.entries(value as JsonSchemaObject).map(([name, property]) => [
          name,
          toGrammarSafe(property, options),
        ]),
      );
    } else result[key] = toGrammarSafe(value, options);
  }
  if (result.type === 'string' && result.enum === undefined && result.const === undefined) {
    const declared = typeof result.maxLength === 'number' ? result.maxLength : options.maxStringLength;
    result.maxLength = Math.min(declared, options.maxStringLength);
  }
  if (result.type === 'object') {
    if (result.additionalProperties === undefined) result.additionalProperties = false;
    // The grammar always generates every property: an optional one becomes required-but-nullable,
    // and dropNulls() turns the nulls back into absent values before zod sees them.
    const properties = (result.properties ?? {}) as JsonSchemaObject;
    const required = new Set((result.required as string[] | undefined) ?? []);
    for (const name of Object.keys(properties)) {
      if (!required.has(name)) {
        properties[name] = { oneOf: [properties[name], { type: 'null' }] };
        required.add(name);
      }
    }
    if (Object.keys(properties).length) result.required = [...required];
  }
  return result;
}

export function zodToGrammarSchema(
  schema: z.ZodType,
  options: { maxStringLength: number },
): JsonSchemaObject {
  return toGrammarSafe(
    z.toJSONSchema(schema, { io: 'input', unrepresentable: 'any' }),
    options,
  ) as JsonSchemaObject;
}

/** Rejects NaN and infinities anywhere in a parsed value (grammars let numbers carry huge exponents). */
export function hasOnlyFiniteNumbers(value: unknown): boolean {
  if (typeof value === 'number') return Number.isFinite(value);
  if (Array.isArray(value)) return value.every(hasOnlyFiniteNumbers);
  if (value && typeof value === 'object') return Object.values(value).every(hasOnlyFiniteNumbers);
  return true;
}

/** Nulls stand for absent optional values in grammar output (see toGrammarSafe). */
export function dropNulls(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(dropNulls);
  if (value && typeof value === 'object') {
    return Object.fromEntries(
      Object.entries(value)
        .filter(([, item]) => item !== null)
        .map(([key, item]) => [key, dropNulls(item)]),
    );
  }
  return value;
}

/** Zod issues in words a model can act on in its repair turn. */
export function describeIssues(error: z.ZodError, limit: number): string {
  return error.issues
    .slice(0, limit)
    .map((issue) => `${issue.path.join('.') || '(root)'}: ${issue.message}`)
    .join('; ');
}

/** A model's JSON reply checked against a schema: the value, or the problem to quote back in one repair. */
export function checkJsonReply<Output>(
  text: string,
  schema: z.ZodType<Output>,
): { value: Output; problem?: undefined } | { value?: undefined; problem: string } {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch {
    return { problem: 'The reply is not valid JSON.' };
  }
  if (!hasOnlyFiniteNumbers(parsed)) return { problem: 'The reply contains a number that is not finite.' };
  const result = schema.safeParse(parsed);
  if (!result.success)
    return { problem: `The reply does not follow the schema: ${describeIssues(result.error, 5)}` };
  return { value: result.data };
}
