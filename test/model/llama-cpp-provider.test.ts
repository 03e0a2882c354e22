import { writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { constrainedJsonModel } from '../../agents/draft-model.ts';
import { planDraft } from '../../agents/draft-plan.ts';
import { createLangChainRecordTools } from '../../agents/langchain/record-tools.ts';
import { createStepProtocol, toolSpecs } from '../../agents/langchain/step-protocol.ts';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { buildManifest } from '../../agents/record-manifest.ts';
import { RunBudget } from '../../agents/run-budget.ts';
import { navigate } from '../../agents/steps/navigate.ts';
import { silentLogger } from '../../src/log.ts';
import { validateGgufFile } from '../../src/model/gguf-header.ts';
import { LlamaCppProvider } from '../../src/model/llama-cpp-provider.ts';
import { agentBudgetSchema, modelProfiles } from '../../src/model/model-config.ts';
import { ModelError } from '../../src/model/provider.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { repoRoot } from '../support/shared-fixtures.ts';
import { buildTinyGguf, tinyModelTokenBias, writeTinyGguf } from '../support/tiny-gguf.ts';

/**
 * The real node-llama-cpp path on the CPU with a tiny random-weight Gemma 3 GGUF written by project
 * code: loading, JSON-schema grammar, the agent's tool-call loop. The weights are noise; the grammar
 * is what makes every answer valid JSON, which is exactly what is under test.
 */
const generated = join(repoRoot, 'test', '.generated');
let modelPath: string;
let provider: LlamaCppProvider;

beforeAll(async () => {
  modelPath = writeTinyGguf();
  provider = await LlamaCppProvider.create({
    modelPath,
    pullCommand: modelProfiles['medgemma-27b'].pullCommand,
    contextSize: 8192,
    threads: 1,
    gpuLayers: 0,
    gpu: false,
    sequences: 2,
    logger: silentLogger(),
    tokenBias: tinyModelTokenBias,
  });
});

afterAll(async () => {
  await provider?.close();
});

describe('tiny GGUF', () => {
  it('is a valid Gemma 3 GGUF with the chat template in its metadata', async () => {
    const summary = await validateGgufFile(modelPath);
    expect(summary).toMatchObject({ architecture: 'gemma3', tensorCount: 28, hasChatTemplate: true });
    expect(summary.fileSize).toBeLessThan(600_000);
  });
});

describe('llama-cpp provider', () => {
  it('stops start-up on a missing file with the exact command to obtain the model', async () => {
    const attempt = LlamaCppProvider.create({
      modelPath: join(generated, 'absent.gguf'),
      pullCommand: modelProfiles['medgemma-27b'].pullCommand,
      contextSize: 2048,
      gpuLayers: 0,
      gpu: false,
      sequences: 1,
      logger: silentLogger(),
    });
    await expect(attempt).rejects.toBeInstanceOf(ModelError);
    await expect(attempt).rejects.toMatchObject({ code: 'model-file-missing', isRetryable: false });
    await expect(attempt).rejects.toThrow(
      'npx node-llama-cpp pull hf:unsloth/medgemma-27b-text-it-GGUF:Q4_K_M',
    );
  });

  it('refuses truncated and garbage files before llama.cpp sees them (the process survives)', async () => {
    const whole = buildTinyGguf();
    const truncated = join(generated, 'truncated.gguf');
    writeFileSync(truncated, whole.subarray(0, whole.length - 4096));
    const garbage = join(generated, 'garbage.gguf');
    writeFileSync(
      garbage,
      Buffer.concat([Buffer.from('GGUF'), Buffer.from([3, 0, 0, 0]), Buffer.alloc(64, 0xff)]),
    );
    const notGguf = join(generated, 'not-gguf.gguf');
    writeFileSync(notGguf, '<html>404</html>');
    for (const path of [truncated, garbage, notGguf]) {
      const attempt = LlamaCppProvider.create({
        modelPath: path,
        pullCommand: 'x',
        contextSize: 2048,
        gpuLayers: 0,
        gpu: false,
        sequences: 1,
        logger: silentLogger(),
      });
      await expect(attempt).rejects.toMatchObject({ code: 'model-file-invalid' });
    }
  });

  it('generates JSON that follows the schema, through the grammar', async () => {
    const result = await provider.generate({
      messages: [
        { role: 'system', content: 'Answer in JSON.' },
        { role: 'user', content: 'Pick a colour.' },
      ],
      jsonSchema: {
        type: 'object',
        properties: { colour: { enum: ['red', 'green'] }, note: { type: 'string', maxLength: 12 } },
        required: ['colour', 'note'],
        additionalProperties: false,
      },
      maxTokens: 200,
      temperature: 0,
    });
    const parsed = JSON.parse(result.content);
    expect(['red', 'green']).toContain(parsed.colour);
    expect(parsed.note.length).toBeLessThanOrEqual(12);
    expect(result.finishReason).toBe('stop');
    expect(result.usage.promptTokens).toBeGreaterThan(10);
    expect(result.usage.completionTokens).toBeGreaterThan(5);
  });

  it('serves more concurrent calls than sequences by queueing them', async () => {
    const schema = {
      type: 'object',
      properties: { n: { enum: [1, 2, 3] } },
      required: ['n'],
      additionalProperties: false,
    };
    const results = await Promise.all(
      [1, 2, 3].map((index) =>
        provider.generate({
          messages: [{ role: 'user', content: `call ${index}` }],
          jsonSchema: schema,
          maxTokens: 40,
        }),
      ),
    );
    for (const result of results) expect([1, 2, 3]).toContain(JSON.parse(result.content).n);
  });

  it('refuses a prompt that would not fit the context instead of shifting it', async () => {
    const attempt = provider.generate({
      messages: [{ role: 'user', content: 'x '.repeat(5000) }],
      maxTokens: 100,
    });
    await expect(attempt).rejects.toMatchObject({ code: 'context-overflow', isRetryable: false });
  });

  it('decodes navigation steps the step protocol accepts', async () => {
    const record = buildPatientRecord({ noteCount: 2 });
    const tools = createLangChainRecordTools(record, {
      manifestText: () => 'manifest',
      maxNoteTokens: 500,
      countTokens: (text) => provider.countTokens(text),
    });
    const protocol = createStepProtocol(toolSpecs(tools, 24), {
      style: 'precise',
      allowFinal: false,
      maxStringLength: 24,
    });
    const result = await provider.generate({
      messages: [{ role: 'user', content: 'Choose a tool.' }],
      jsonSchema: protocol.jsonSchema,
      maxTokens: 400,
    });
    const parsed = protocol.parse(result.content);
    expect(parsed.step?.action).toBe('call');
  });

  it('runs the whole agent (tool loop, extraction, write-up) and every line it keeps cites the record', async () => {
    const record = buildPatientRecord({ noteCount: 3, noteLength: 300, observationCount: 4 });
    const calls: { schemaName?: string; lastTurn: string; content: string }[] = [];
    const recording = Object.create(provider) as LlamaCppProvider;
    recording.generate = async (request) => {
      const result = await provider.generate(request);
      calls.push({
        schemaName: request.schemaName,
        lastTurn: request.messages.at(-1)!.content,
        content: result.content,
      });
      return result;
    };
    const engine = new MedGemmaEngine({
      provider: recording,
      prompts: PromptLibrary.load(),
      budget: agentBudgetSchema.parse({
        maxSteps: 2,
        maxOutputTokens: 400,
        materialTokens: 1200,
        // The tiny vocabulary spends a token per character: a roomy allowance lets it take two steps.
        minPromptTokensPerDraft: 60_000,
        maxPromptTokensPerDraft: 60_000,
      }),
      logger: silentLogger(),
      limits: {
        maxFactsPerChunk: 2,
        maxFactLength: 40,
        maxLinesPerSection: 1,
        maxLineLength: 40,
        maxCitationsPerLine: 1,
        maxStringLength: 16,
      },
    });
    const result = await engine.draft({ kind: 'progress-summary', record, nudges: [] });
    expect(result.engine.model).toBe('tiny-random-gemma3');
    // The first step, decoded under the grammar, called a tool; the next step saw its result.
    const firstStep = JSON.parse(calls[0].content);
    expect(calls[0].schemaName).toBe('tool_step');
    expect(firstStep.action).toBe('call');
    expect(calls[1].lastTurn).toMatch(new RegExp(`^Result of ${firstStep.tool}:`));
    expect(calls.map((call) => call.schemaName)).toContain('facts');
    expect(calls.at(-1)!.schemaName).toBe('draft');
    expect(result.usage!.modelCalls).toBe(calls.length);
    // Constrained decoding kept every citation inside what the run retrieved: nothing was removed.
    expect(result.text).toMatch(/^## /);
    const verification = verifyDraft(result, record);
    expect(verification.flagged).toBe(false);
    const retrieved = new Set([
      ...record.notes.map((note) => note.reference),
      ...record.conditions.map((condition) => `Condition/${condition.id}`),
      ...record.medications.map((medication) => `MedicationRequest/${medication.id}`),
      ...record.observations.map((observation) => `Observation/${observation.id}`),
      ...record.encounters.map((encounter) => `Encounter/${encounter.id}`),
      'AllergyIntolerance/allergy-1',
    ]);
    expect(verification.cited.length).toBeGreaterThan(0);
    for (const citation of verification.cited) expect(retrieved).toContain(citation);
  });

  it('runs the navigation agent (createAgent) over the real model through the adapter, ended by the step limit', async () => {
    const stepTurns: string[] = [];
    // Without the reading list among the alternatives the model cannot end navigation: only the limit can.
    const neverDone = Object.create(provider) as LlamaCppProvider;
    neverDone.generate = async (request) => {
      if (request.schemaName !== 'tool_step') return provider.generate(request);
      stepTurns.push(request.messages.at(-1)!.content);
      const alternatives = (
        request.jsonSchema!.oneOf as { properties: { tool: { const: string } } }[]
      ).filter((alternative) => alternative.properties.tool.const !== 'reading_list');
      return provider.generate({ ...request, jsonSchema: { oneOf: alternatives } });
    };
    const record = buildPatientRecord({ noteCount: 2, noteLength: 200 });
    const prompts = PromptLibrary.load();
    const limits = agentBudgetSchema.parse({
      maxSteps: 3,
      maxToolCalls: 10,
      maxOutputTokens: 400,
      minPromptTokensPerDraft: 60_000,
      maxPromptTokensPerDraft: 60_000,
    });
    const budget = new RunBudget(limits, provider.contextSize);
    const navigation = await navigate({
      model: constrainedJsonModel(neverDone, { prompts, maxStringLength: 10 }),
      budget,
      prompts,
      record,
      manifest: buildManifest(record, 'progress-summary', {
        maxTokens: 600,
        countTokens: (text) => provider.countTokens(text),
      }),
      plan: planDraft(record, limits),
      goal: 'Summarise the visit.',
    });
    const repairs = stepTurns.filter((turn) => turn.endsWith('Reply again with only one JSON object.'));
    expect(navigation.ended).toBe('step-limit');
    expect(navigation.steps).toBe(3);
    expect(stepTurns.length - repairs.length).toBe(3);
    expect(budget.toolCalls).toBe(3);
  });
});
