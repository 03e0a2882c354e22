import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { dropNulls, hasOnlyFiniteNumbers, zodToGrammarSchema } from '../../agents/grammar-schema.ts';
import { createStepProtocol, toolSpecs } from '../../agents/langchain/step-protocol.ts';
import { PromptLibrary, parsePromptFile, renderPrompt } from '../../agents/prompt-library.ts';
import { buildManifest } from '../../agents/record-manifest.ts';
import { createRecordTools, sanitizeToolError } from '../../agents/record-tools.ts';
import { estimateTokens } from '../../src/model/provider.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';

describe('grammar-safe schemas', () => {
  it('drops what the grammar ignores, rewrites anyOf, caps strings, makes optional properties nullable', () => {
    const schema = zodToGrammarSchema(
      z.object({
        name: z.string().regex(/^a/).default('a'),
        count: z.number().min(1).max(3),
        when: z.iso.date().optional(),
        either: z.union([z.string(), z.number()]).nullable(),
      }),
      { maxStringLength: 50 },
    );
    const text = JSON.stringify(schema);
    for (const dropped of [
      '$schema',
      '"pattern"',
      '"default"',
      '"minimum"',
      '"maximum"',
      '"format"',
      'anyOf',
    ]) {
      expect(text).not.toContain(dropped);
    }
    const properties = schema.properties as Record<string, Record<string, unknown>>;
    // A default makes the input optional: like `when`, it may be null in grammar output.
    expect(properties.name).toEqual({ oneOf: [{ type: 'string', maxLength: 50 }, { type: 'null' }] });
    expect(properties.when).toEqual({ oneOf: [{ type: 'string', maxLength: 50 }, { type: 'null' }] });
    expect(properties.count).toEqual({ type: 'number' });
    expect([...(schema.required as string[])].sort()).toEqual(['count', 'either', 'name', 'when']);
    expect(schema.additionalProperties).toBe(false);
  });

  it('turns grammar nulls back into absent values and rejects non-finite numbers', () => {
    expect(dropNulls({ a: null, b: { c: null, d: 1 } })).toEqual({ b: { d: 1 } });
    expect(hasOnlyFiniteNumbers({ a: [1, 2, { b: 3 }] })).toBe(true);
    expect(hasOnlyFiniteNumbers({ a: [1, Number.POSITIVE_INFINITY] })).toBe(false);
  });
});

describe('step protocol (inside the constrained-JSON adapter)', () => {
  const record = buildPatientRecord({ noteCount: 2 });
  const tools = createRecordTools(record, {
    manifestText: () => 'm',
    maxNoteTokens: 100,
    countTokens: estimateTokens,
  }).map((recordTool) => ({
    name: recordTool.name,
    description: recordTool.description,
    schema: recordTool.schema,
  }));
  const specs = toolSpecs(tools, 40);

  it('accepts a call and a final step, and names the problem when arguments do not fit the tool', () => {
    const protocol = createStepProtocol(specs, { style: 'precise', allowFinal: true, maxStringLength: 40 });
    expect(protocol.parse('{"action":"call","tool":"read_note","args":{"id":"note-1"}}')).toEqual({
      step: { action: 'call', tool: 'read_note', args: { id: 'note-1' } },
    });
    const wrong = protocol.parse('{"action":"call","tool":"get_observations","args":{"id":"x"}}');
    expect(wrong.step).toEqual({ action: 'call', tool: 'get_observations', args: { id: 'x' } });
    expect(wrong.problem).toMatch(/do not fit get_observations/);
    expect(protocol.parse('{"action":"call","tool":"fetch_url","args":{}}')).toEqual({
      problem:
        '"tool" must be one of get_manifest, search_resources, read_note, get_observations when "action" is "call".',
    });
    expect(protocol.parse('{"action":"final","content":"f"}')).toEqual({
      step: { action: 'final', content: 'f' },
    });
    const mustCall = createStepProtocol(specs, { style: 'precise', allowFinal: false, maxStringLength: 40 });
    expect(mustCall.parse('{"action":"final","content":"f"}').problem).toMatch(/^Call one of the tools/);
  });

  it('gives one grammar alternative per tool (precise) or a plain root object (flat)', () => {
    const precise = createStepProtocol(specs, { style: 'precise', allowFinal: true, maxStringLength: 40 });
    expect((precise.jsonSchema.oneOf as unknown[]).length).toBe(tools.length + 1);
    const flat = createStepProtocol(specs, { style: 'flat', allowFinal: true, maxStringLength: 40 });
    expect(flat.jsonSchema.type).toBe('object');
    expect(flat.jsonSchema.required).toEqual(['action', 'tool', 'args', 'content']);
    // A flat final step still parses, and a replayed step is written in the flat shape.
    expect(flat.parse('{"action":"final","tool":"none","args":{},"content":"done"}').step).toEqual({
      action: 'final',
      content: 'done',
    });
    expect(flat.render({ action: 'call', tool: 'get_manifest', args: {} })).toBe(
      '{"action":"call","tool":"get_manifest","args":{},"content":""}',
    );
  });

  it('sanitises tool errors before they reach the prompt', () => {
    const error = new Error('boom at /work/main/agents/record-tools.ts:42:7\n    at stack frame');
    expect(sanitizeToolError(error)).toBe('boom at (path)');
  });
});

describe('manifest', () => {
  it('always lists every active problem, medication and allergy, and cuts the long tails to the budget', () => {
    const record = buildPatientRecord({ noteCount: 200, observationCount: 300 });
    const manifest = buildManifest(record, 'progress-summary', {
      maxTokens: 400,
      countTokens: estimateTokens,
    });
    for (const id of [
      'Condition/cond-1',
      'Condition/cond-2',
      'Condition/cond-3',
      'MedicationRequest/med-1',
      'MedicationRequest/med-3',
      'AllergyIntolerance/allergy-1',
    ]) {
      expect(manifest.text).toContain(`[${id}]`);
      expect(manifest.references.has(id)).toBe(true);
    }
    expect(manifest.text).toMatch(/\(\d+ more: use search_resources with type DocumentReference\)/);
    expect(estimateTokens(manifest.text)).toBeLessThan(700);
    expect(manifest.essentials).toHaveLength(3 + 3 + 1);
  });

  it('lists results that are not final yet as pending', () => {
    const record = buildPatientRecord({ noteCount: 2, observationCount: 4 });
    record.observations[0].status = 'preliminary';
    const manifest = buildManifest(record, 'previsit-briefing', {
      maxTokens: 2000,
      countTokens: estimateTokens,
    });
    expect(manifest.text).toMatch(/Pending results:\n\[Observation\/obs-1\] .*preliminary/);
  });
});

describe('prompt library', () => {
  it('loads every prompt file with an id and a version', () => {
    const library = PromptLibrary.load();
    for (const id of [
      'record-navigator',
      'fact-extraction',
      'fact-reduction',
      'progress-summary',
      'previsit-briefing',
      'tool-call-protocol',
    ]) {
      expect(library.get(id).version).toMatch(/^\d+\.\d+\.\d+$/);
    }
    expect(library.get('previsit-briefing').headings).toContain('Pending results');
  });

  it('refuses files without front matter and renders only known placeholders', () => {
    expect(() => parsePromptFile('no front matter', 'x.md')).toThrow(/front matter/);
    const template = parsePromptFile('---\nid: t\nversion: 1.0.0\n---\nHello {{name}}', 't.md');
    expect(renderPrompt(template, { name: 'world' })).toBe('Hello world');
    expect(() => renderPrompt(template, {})).toThrow(/needs a value for name/);
    expect(() => renderPrompt(template, { name: 'a', extra: 'b' })).toThrow(/no place for extra/);
  });
});
