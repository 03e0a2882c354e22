import { AIMessage, type BaseMessage, HumanMessage, ToolMessage } from '@langchain/core/messages';
import { tool } from '@langchain/core/tools';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { constrainedJsonModel } from '../../agents/draft-model.ts';
import { planDraft } from '../../agents/draft-plan.ts';
import { MedGemmaChatModel } from '../../agents/langchain/medgemma-chat-model.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { buildManifest } from '../../agents/record-manifest.ts';
import { RunBudget } from '../../agents/run-budget.ts';
import { navigate } from '../../agents/steps/navigate.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { readingList, ScriptedProvider, toolCall } from '../support/scripted-model.ts';

const prompts = PromptLibrary.load();
const protocolPrompt = prompts.get('tool-call-protocol');
const final = (content: string) => JSON.stringify({ action: 'final', content });

function chatModel(provider: ScriptedProvider, maxTokens = 100) {
  return new MedGemmaChatModel({ provider, protocolPrompt, maxTokens });
}

describe('MedGemma chat model (LangChain adapter)', () => {
  it('binds tools through the constrained-JSON protocol and returns tool calls on an AIMessage', async () => {
    const provider = new ScriptedProvider({ script: [toolCall('add', { a: 2, b: 3 })] });
    const add = tool(({ a, b }: { a: number; b: number }) => String(a + b), {
      name: 'add',
      description: 'Adds two numbers.',
      schema: z.object({ a: z.number(), b: z.number() }),
    });
    const message = (await chatModel(provider)
      .bindTools([add])
      .invoke([new HumanMessage('What is 2 + 3?')])) as AIMessage;
    expect(message.content).toBe('');
    expect(message.tool_calls).toEqual([
      { id: expect.any(String), name: 'add', args: { a: 2, b: 3 }, type: 'tool_call' },
    ]);
    const request = provider.calls[0];
    // Constrained decoding: one alternative per tool plus the final answer, named as a tool step.
    expect(request.schemaName).toBe('tool_step');
    expect((request.jsonSchema!.oneOf as unknown[]).length).toBe(2);
    // The protocol is the tool-call-protocol prompt file, rendered as the system turn.
    expect(request.messages[0]).toMatchObject({ role: 'system' });
    expect(request.messages[0].content).toContain('Reply with one JSON object and nothing else.');
    expect(request.messages[0].content).toContain('- add: Adds two numbers.');
  });

  it('repairs one malformed reply and answers with plain content on a final step', async () => {
    const provider = new ScriptedProvider({ script: ['{"action": "fin', final('Twelve.')] });
    const echo = tool(() => 'x', { name: 'echo', description: 'Echo.', schema: z.object({}) });
    const message = (await chatModel(provider)
      .bindTools([echo])
      .invoke([new HumanMessage('?')])) as AIMessage;
    expect(message.content).toBe('Twelve.');
    expect(provider.calls[1].messages.at(-1)!.content).toContain('not valid JSON');
    expect(message.usage_metadata?.input_tokens).toBe(
      provider.calls[0].promptTokens + provider.calls[1].promptTokens,
    );
  });

  it('leaves no final answer to a model that must call a tool (tool_choice any)', async () => {
    const provider = new ScriptedProvider({ script: [final('I am done.'), toolCall('echo', {})] });
    const echo = tool(() => 'x', { name: 'echo', description: 'Echo.', schema: z.object({}) });
    const message = (await chatModel(provider)
      .bindTools([echo], { tool_choice: 'any' })
      .invoke([new HumanMessage('?')])) as AIMessage;
    expect(message.tool_calls?.map((call) => call.name)).toEqual(['echo']);
    // The only alternative is the tool: decoding cannot produce a final answer.
    expect(provider.calls[0].jsonSchema?.oneOf).toBeUndefined();
    expect(provider.calls[0].jsonSchema?.properties).toMatchObject({ tool: { const: 'echo' } });
    expect(provider.calls[1].messages.at(-1)!.content).toContain('Call one of the tools: echo.');
  });

  it('replays earlier tool calls and results as Gemma-friendly turns', async () => {
    const provider = new ScriptedProvider({ script: [final('done')] });
    const echo = tool(() => 'x', {
      name: 'echo',
      description: 'Echo.',
      schema: z.object({ text: z.string() }),
    });
    const history: BaseMessage[] = [
      new HumanMessage('start'),
      new AIMessage({
        content: '',
        tool_calls: [{ id: 'c1', name: 'echo', args: { text: 'hi' }, type: 'tool_call' }],
      }),
      new ToolMessage({ content: 'hi', tool_call_id: 'c1', name: 'echo' }),
    ];
    await chatModel(provider, 50).bindTools([echo]).invoke(history);
    expect(provider.calls[0].messages.slice(1)).toEqual([
      { role: 'user', content: 'start' },
      { role: 'assistant', content: '{"action":"call","tool":"echo","args":{"text":"hi"}}' },
      { role: 'user', content: 'Result of echo:\nhi' },
    ]);
  });

  it('meters every call, repairs included, and refuses one over the run budget before sending it', async () => {
    const provider = new ScriptedProvider({ script: ['nope', final('ok'), final('again')] });
    const budget = new RunBudget(agentBudgetSchema.parse({ maxModelCalls: 2 }), provider.contextSize);
    const model = new MedGemmaChatModel({ provider, protocolPrompt, maxTokens: 50, meter: budget });
    const echo = tool(() => 'x', { name: 'echo', description: 'Echo.', schema: z.object({}) });
    await model.bindTools([echo]).invoke([new HumanMessage('?')]);
    expect(budget.modelCalls).toBe(2);
    expect(budget.promptTokens).toBe(provider.calls[0].promptTokens + provider.calls[1].promptTokens);
    await expect(model.bindTools([echo]).invoke([new HumanMessage('?')])).rejects.toMatchObject({
      limit: 'model-calls',
    });
    expect(provider.calls).toHaveLength(2);
  });
});

describe('record navigation (createAgent over the adapter)', () => {
  function navigation(provider: ScriptedProvider, budgetOverrides: Record<string, number> = {}) {
    const record = buildPatientRecord({ noteCount: 3 });
    const limits = agentBudgetSchema.parse({
      minPromptTokensPerDraft: 40_000,
      maxPromptTokensPerDraft: 40_000,
      ...budgetOverrides,
    });
    const budget = new RunBudget(limits, provider.contextSize);
    const run = navigate({
      model: constrainedJsonModel(provider, { prompts }),
      budget,
      prompts,
      record,
      manifest: buildManifest(record, 'progress-summary', {
        maxTokens: 2000,
        countTokens: (text) => provider.countTokens(text),
      }),
      plan: planDraft(record, limits),
      goal: 'Summarise the visit.',
    });
    return { run, budget };
  }

  it('runs the record tools, lets the model react to a tool error, and ends on its reading list', async () => {
    const provider = new ScriptedProvider({
      script: [
        toolCall('search_resources', { type: 'Condition', code: 'diabetes', since: null }),
        toolCall('read_note', { note: 'wrong argument name' }),
        toolCall('read_note', { note: 'still wrong' }),
        toolCall('read_note', { id: 'DocumentReference/note-2' }),
        readingList(['DocumentReference/note-3'], 'diabetes'),
      ],
    });
    const { run, budget } = navigation(provider);
    const result = await run;
    expect(result).toMatchObject({
      readingList: ['DocumentReference/note-3'],
      focus: 'diabetes',
      ended: 'reading-list',
      steps: 4,
    });
    expect(result.notesRead.map((note) => note.reference)).toEqual(['DocumentReference/note-2']);
    expect(result.shown.has('Condition/cond-1')).toBe(true);
    expect(provider.calls).toHaveLength(5);
    // The repaired call still had the wrong argument: the tool runner answered with the problem.
    expect(provider.calls[3].messages.at(-1)!.content).toMatch(
      /^Result of read_note:\nThe arguments do not fit read_note: /,
    );
    expect(provider.calls[4].messages.at(-1)!.content).toContain('Note [DocumentReference/note-2]');
    expect(budget.toolCalls).toBe(3);
  });

  it('stops quietly at the step limit: exactly that many steps, each tool run once', async () => {
    const provider = new ScriptedProvider({ fallback: toolCall('get_manifest', {}) });
    const { run, budget } = navigation(provider, { maxSteps: 3 });
    const result = await run;
    expect(result.ended).toBe('step-limit');
    expect(result.steps).toBe(3);
    expect(provider.calls).toHaveLength(3);
    expect(budget.toolCalls).toBe(3);
    expect(result.readingList).toEqual([]);
  });
});
