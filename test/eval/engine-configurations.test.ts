import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import {
  ConfigurationError,
  createConfiguration,
  parseConfiguration,
} from '../../src/eval/configurations.ts';
import { labelledFacts } from '../../src/eval/labelled-set.ts';
import { scoreDraft } from '../../src/eval/metrics.ts';
import { recordForDraft } from '../../src/eval/run-eval.ts';
import { ScriptedCooperativeModel } from '../../src/eval/scripted-cooperative-model.ts';
import { type EvalSource, openSource } from '../../src/eval/sources.ts';
import { silentLogger } from '../../src/log.ts';
import type { ChatMessage } from '../../src/model/provider.ts';
import { draftVerified } from '../../src/pipeline/process-encounter-job.ts';
import { startScriptedInferenceServer } from '../support/openai-compatible-server.ts';
import { writeTinyGguf } from '../support/tiny-gguf.ts';

/**
 * The configurations an evaluation compares, on one small sandbox patient: the scripted cooperative model
 * carries what its prompts show into the draft (planted statement included), and the tiny random-weight
 * GGUF runs through the real node-llama-cpp path and is scored, however poorly.
 */
let source: EvalSource;
let record: PatientRecord;

beforeAll(async () => {
  source = await openSource({ kind: 'sandbox', patients: 3, seed: 20261127 });
  const reference = source.cases.find(
    (candidate) => candidate.patientId === 'sbx-0002' && candidate.kind === 'progress-summary',
  );
  record = (await recordForDraft(source.fhir, reference!, {
    draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
  })) as PatientRecord;
}, 120_000);

afterAll(async () => {
  await source?.close();
});

async function measure(text: string) {
  const configuration = await createConfiguration(parseConfiguration(text), silentLogger());
  try {
    const facts = labelledFacts(record, [], source.planted.get('sbx-0002') ?? []);
    const { result, verification } = await draftVerified(
      configuration.engine,
      { kind: 'progress-summary', record, nudges: [] },
      silentLogger(),
    );
    const score = scoreDraft({
      record,
      facts,
      engineText: result.text,
      headings: result.headings,
      verification,
      owners: new Map(),
      expectedRuleIds: [],
    });
    return { result, score, stages: configuration.scripted?.callsByStage };
  } finally {
    await configuration.close();
  }
}

describe('eval configurations', () => {
  it('runs the scripted cooperative model through the agents, which carries the latest note’s planted statement', async () => {
    const { result, score, stages } = await measure('scripted');
    expect(result.engine.id).toBe('medgemma-agent');
    expect(result.usage?.modelCalls).toBe(3);
    expect(stages?.get('tool_step')).toBe(1);
    expect(stages?.get('draft')).toBe(1);
    const planted = score.facts.filter((fact) => fact.category === 'planted');
    expect(planted.filter((fact) => fact.recalled).length).toBeGreaterThanOrEqual(1);
    expect(score.statements.supported).toBe(score.statements.checked);
  });

  it('runs a GGUF in process and scores what it wrote', async () => {
    const { result, score } = await measure(`llama-cpp:${writeTinyGguf()}`);
    // Random weights: the model's draft, or, when the verifier kept none of its lines, the extractive fallback's.
    if (result.engine.id === 'extractive') expect(result.usage).toBeUndefined();
    else expect(result.usage?.modelCalls).toBeGreaterThanOrEqual(2);
    expect(score.facts.length).toBeGreaterThan(5);
    expect(score.wrongPatientCitationsWritten).toBe(0);
  }, 180_000);

  it('drafts through a remote inference server, counting its calls and tokens', async () => {
    // An OpenAI-compatible server whose answers come from the scripted cooperative model.
    const model = new ScriptedCooperativeModel();
    const server = await startScriptedInferenceServer([], (body) => {
      const schema = body.response_format?.json_schema;
      const messages = body.messages as ChatMessage[];
      const content = model.answer({
        messages,
        schemaName: schema?.name,
        jsonSchema: schema?.schema,
        maxTokens: body.max_tokens ?? 1,
      });
      return { content, usage: { prompt_tokens: 1000, completion_tokens: 50 } };
    });
    try {
      const { result, score } = await measure(`remote:${server.url}#google/medgemma-27b-text-it`);
      expect(server.requests.length).toBeGreaterThanOrEqual(3);
      expect(server.requests.every((request) => request.body.model === 'google/medgemma-27b-text-it')).toBe(
        true,
      );
      expect(result.engine.id).toBe('medgemma-agent');
      expect(result.usage?.modelCalls).toBe(server.requests.length);
      expect(score.facts.filter((fact) => fact.recalled).length).toBeGreaterThan(5);
    } finally {
      await server.close();
    }
  });

  it('refuses configurations it cannot build', () => {
    expect(() => parseConfiguration('llama-cpp:/nowhere/model.gguf')).toThrow(ConfigurationError);
    expect(() => parseConfiguration('remote:ftp://server')).toThrow(ConfigurationError);
    expect(() => parseConfiguration('remote:http://user:secret@server')).toThrow(/credentials/);
    expect(parseConfiguration('remote:http://vllm:8000#google/medgemma-4b-it')).toEqual({
      kind: 'remote',
      name: 'remote:vllm:8000#google/medgemma-4b-it',
      endpointUrl: 'http://vllm:8000',
      model: 'google/medgemma-4b-it',
    });
  });
});
