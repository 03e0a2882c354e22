import { afterEach, describe, expect, it } from 'vitest';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { silentLogger } from '../../src/log.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import { ModelError } from '../../src/model/provider.ts';
import { RemoteProvider } from '../../src/model/remote-provider.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';
import {
  type ChatCompletionRequestBody,
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { cooperativeReply } from '../support/scripted-model.ts';

let server: ScriptedInferenceServer | undefined;
afterEach(async () => {
  await server?.close();
  server = undefined;
});

function remote(url: string, overrides: Partial<ConstructorParameters<typeof RemoteProvider>[0]> = {}) {
  return new RemoteProvider({
    endpointUrl: url,
    model: 'google/medgemma-27b-text-it',
    contextSize: 8192,
    timeoutMs: 5000,
    retries: 0,
    retryDelayMs: 10,
    ...overrides,
  });
}

const schema = {
  type: 'object',
  properties: { answer: { enum: ['yes', 'no'] } },
  required: ['answer'],
  additionalProperties: false,
};

describe('remote provider', () => {
  it('posts Gemma-shaped turns and a json_schema response format to /v1/chat/completions', async () => {
    server = await startScriptedInferenceServer([
      {
        content: '<unused94>thought\nlet me think<unused95>{"answer":"yes"}',
        usage: { prompt_tokens: 42, completion_tokens: 7 },
      },
    ]);
    const provider = remote(server.url, { accessToken: 'secret-token' });
    const result = await provider.generate({
      messages: [
        { role: 'system', content: 'You answer in JSON.' },
        { role: 'user', content: 'Is it raining?' },
        { role: 'user', content: 'Answer now.' },
      ],
      jsonSchema: schema,
      schemaName: 'answer',
      maxTokens: 64,
      temperature: 0,
    });
    expect(result).toEqual({
      content: '{"answer":"yes"}',
      finishReason: 'stop',
      usage: { promptTokens: 42, completionTokens: 7 },
    });
    const [request] = server.requests;
    expect(request.method).toBe('POST');
    expect(request.path).toBe('/v1/chat/completions');
    expect(request.headers.authorization).toBe('Bearer secret-token');
    expect(request.body.model).toBe('google/medgemma-27b-text-it');
    // No system role, and no two user turns in a row.
    expect(request.body.messages).toEqual([
      { role: 'user', content: 'You answer in JSON.\n\nIs it raining?\n\nAnswer now.' },
    ]);
    expect(request.body.response_format).toEqual({
      type: 'json_schema',
      json_schema: { name: 'answer', schema, strict: true },
    });
    expect(request.body.max_tokens).toBe(64);
    expect(request.body.temperature).toBe(0);
  });

  it('retries a 503 and succeeds', async () => {
    server = await startScriptedInferenceServer([
      { status: 503, error: 'loading' },
      { content: '{"answer":"no"}' },
    ]);
    const result = await remote(server.url, { retries: 1 }).generate({
      messages: [{ role: 'user', content: 'q' }],
      maxTokens: 10,
    });
    expect(result.content).toBe('{"answer":"no"}');
    expect(server.requests).toHaveLength(2);
  });

  it('marks errors retryable by status: 429 and 5xx yes, 400 and 401 no', async () => {
    for (const [status, retryable] of [
      [429, true],
      [500, true],
      [502, true],
      [400, false],
      [401, false],
      [422, false],
    ] as const) {
      server = await startScriptedInferenceServer([{ status, error: 'nope' }]);
      const attempt = remote(server.url).generate({
        messages: [{ role: 'user', content: 'q' }],
        maxTokens: 10,
      });
      await expect(attempt).rejects.toBeInstanceOf(ModelError);
      await expect(attempt).rejects.toMatchObject({ status, isRetryable: retryable, code: 'http-error' });
      await server.close();
      server = undefined;
    }
  });

  it('does not retry a request the server rejected', async () => {
    server = await startScriptedInferenceServer([{ status: 400, error: 'bad schema' }, { content: '{}' }]);
    await expect(
      remote(server.url, { retries: 2 }).generate({
        messages: [{ role: 'user', content: 'q' }],
        maxTokens: 10,
      }),
    ).rejects.toMatchObject({ status: 400 });
    expect(server.requests).toHaveLength(1);
  });

  it('times out a slow server as a retryable error', async () => {
    server = await startScriptedInferenceServer([{ content: '{}', delayMs: 3000 }]);
    const attempt = remote(server.url, { timeoutMs: 1000 }).generate({
      messages: [{ role: 'user', content: 'q' }],
      maxTokens: 10,
    });
    await expect(attempt).rejects.toMatchObject({ code: 'timeout', isRetryable: true });
  });

  it('reports an unreachable server as retryable', async () => {
    server = await startScriptedInferenceServer([]);
    const url = server.url;
    await server.close();
    server = undefined;
    await expect(
      remote(url).generate({ messages: [{ role: 'user', content: 'q' }], maxTokens: 10 }),
    ).rejects.toMatchObject({
      code: 'unreachable',
      isRetryable: true,
    });
  });

  it('refuses a prompt over the context before sending it', async () => {
    server = await startScriptedInferenceServer([]);
    const attempt = remote(server.url, { contextSize: 1000 }).generate({
      messages: [{ role: 'user', content: 'x'.repeat(4000) }],
      maxTokens: 10,
    });
    await expect(attempt).rejects.toMatchObject({ code: 'context-overflow', isRetryable: false });
    expect(server.requests).toHaveLength(0);
  });

  it('reports a cut-off answer as finish reason length', async () => {
    server = await startScriptedInferenceServer([{ content: '{"answer":', finishReason: 'length' }]);
    const result = await remote(server.url).generate({
      messages: [{ role: 'user', content: 'q' }],
      maxTokens: 3,
    });
    expect(result.finishReason).toBe('length');
  });

  it('drives the whole agent against the server with flat step schemas', async () => {
    const replyFor = (body: ChatCompletionRequestBody) => ({
      content: cooperativeReply({
        messages: body.messages.map((message) => ({
          role: message.role as 'user' | 'assistant',
          content: message.content,
        })),
        schemaName: body.response_format?.json_schema?.name,
        jsonSchema: body.response_format?.json_schema?.schema,
        maxTokens: body.max_tokens ?? 0,
      }),
    });
    server = await startScriptedInferenceServer([], replyFor);
    const engine = new MedGemmaEngine({
      provider: remote(server.url),
      prompts: PromptLibrary.load(),
      budget: agentBudgetSchema.parse({}),
      logger: silentLogger(),
      stepSchemaStyle: 'flat',
    });
    const record = buildPatientRecord({ noteCount: 5 });
    const result = await engine.draft({ kind: 'previsit-briefing', record, nudges: [] });
    const names = server.requests.map((request) => request.body.response_format?.json_schema?.name);
    expect(names[0]).toBe('tool_step');
    expect(names.at(-1)).toBe('draft');
    // The flat step schema has a plain object at the root, as strict json_schema servers expect.
    expect(server.requests[0].body.response_format?.json_schema?.schema.type).toBe('object');
    // Alternatives reach the server as anyOf, which structured-output engines support more widely.
    const sent = JSON.stringify(server.requests.map((request) => request.body.response_format));
    expect(sent).toContain('"anyOf"');
    expect(sent).not.toContain('"oneOf"');
    for (const request of server.requests) {
      expect(request.body.messages[0].role).toBe('user');
      expect(request.body.messages.some((message) => message.role === 'system')).toBe(false);
    }
    expect(result.engine.model).toBe('google/medgemma-27b-text-it');
    expect(verifyDraft(result, record).flagged).toBe(false);
    expect(result.text).toContain('[');
  });
});
