import { AIMessage, type BaseMessage, HumanMessage, ToolMessage } from '@langchain/core/messages';
import { tool } from '@langchain/core/tools';
import { describe, expect, it } from 'vitest';
import { z } from 'zod';
import { MedGemmaChatModel } from '../../agents/langchain/medgemma-chat-model.ts';
import { createRecordNavigatorAgent } from '../../agents/langchain/record-navigator-agent.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { ScriptedProvider } from '../support/scripted-model.ts';

const call = (tool: string, args: Record<string, unknown>) => JSON.stringify({ action: 'call', tool, args });
const final = (content: string) => JSON.stringify({ action: 'final', content });

describe('MedGemma chat model (LangChain adapter)', () => {
  it('binds tools through the constrained-JSON protocol and returns tool calls on an AIMessage', async () => {
    const provider = new ScriptedProvider({ script: [call('add', { a: 2, b: 3 })] });
    const add = tool(({ a, b }: { a: number; b: number }) => String(a + b), {
      name: 'add',
      description: 'Adds two numbers.',
      schema: z.object({ a: z.number(), b: z.number() }),
    });
    const model = new MedGemmaChatModel({ provider, maxTokens: 100 }).bindTools([add]);
    const message = (await model.invoke([new HumanMessage('What is 2 + 3?')])) as AIMessage;
    expect(message.content).toBe('');
    expect(message.tool_calls).toEqual([
      { id: expect.any(String), name: 'add', args: { a: 2, b: 3 }, type: 'tool_call' },
    ]);
    const request = provider.calls[0];
    // Constrained decoding: one alternative per tool plus the final answer; no system turn reaches the provider unshaped.
    expect((request.jsonSchema!.oneOf as unknown[]).length).toBe(2);
    expect(request.messages[0]).toMatchObject({ role: 'system' });
    expect(request.messages[0].content).toContain('- add: Adds two numbers.');
  });

  it('repairs one malformed reply and answers with plain content on a final step', async () => {
    const provider = new ScriptedProvider({ script: ['{"action": "fin', final('Twelve.')] });
    const echo = tool(() => 'x', { name: 'echo', description: 'Echo.', schema: z.object({}) });
    const model = new MedGemmaChatModel({ provider, maxTokens: 100 }).bindTools([echo]);
    const message = (await model.invoke([new HumanMessage('?')])) as AIMessage;
    expect(message.content).toBe('Twelve.');
    expect(provider.calls[1].messages.at(-1)!.content).toContain('not valid JSON');
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
    await new MedGemmaChatModel({ provider, maxTokens: 50 }).bindTools([echo]).invoke(history);
    const messages = provider.calls[0].messages;
    expect(messages.slice(1)).toEqual([
      { role: 'user', content: 'start' },
      { role: 'assistant', content: '{"action":"call","tool":"echo","args":{"text":"hi"}}' },
      { role: 'user', content: 'Result of echo:\nhi' },
    ]);
  });
});

describe('record navigator agent (createAgent)', () => {
  it('runs the tools, lets the model react to a tool error, and ends on its final answer', async () => {
    const record = buildPatientRecord({ noteCount: 3 });
    const provider = new ScriptedProvider({
      script: [
        call('search_resources', { type: 'Condition', code: 'diabetes', since: null }),
        call('read_note', { note: 'wrong argument name' }),
        call('read_note', { id: 'DocumentReference/note-2' }),
        final('Diabetes is the main problem [Condition/cond-1].'),
      ],
    });
    const agent = createRecordNavigatorAgent({
      provider,
      record,
      manifestText: 'manifest',
      maxModelCalls: 6,
      maxTokens: 300,
      systemPrompt: 'Navigate the record.',
    });
    const state = await agent.invoke({ messages: [new HumanMessage('What matters?')] });
    const toolMessages = state.messages.filter((message: BaseMessage) => message.getType() === 'tool');
    expect(toolMessages).toHaveLength(3);
    expect(String(toolMessages[0].content)).toContain('[Condition/cond-1] Diabetes mellitus type 2');
    expect(String(toolMessages[1].content)).toMatch(/error|invalid|expected/i);
    expect(String(toolMessages[2].content)).toContain('Note [DocumentReference/note-2]');
    expect(state.messages.at(-1)!.content).toBe('Diabetes is the main problem [Condition/cond-1].');
    expect(provider.calls).toHaveLength(4);
    // The model saw the tool error and the note, as user turns.
    expect(provider.calls[2].messages.at(-1)!.content).toMatch(/^Result of read_note:/);
  });

  it('stops quietly at the model-call limit', async () => {
    const provider = new ScriptedProvider({ fallback: call('get_manifest', {}) });
    const agent = createRecordNavigatorAgent({
      provider,
      record: buildPatientRecord(),
      manifestText: 'manifest',
      maxModelCalls: 3,
      maxTokens: 200,
      systemPrompt: 'Navigate.',
    });
    const state = await agent.invoke({ messages: [new HumanMessage('Go.')] });
    expect(provider.calls).toHaveLength(3);
    expect(state.messages.filter((message: BaseMessage) => message.getType() === 'tool')).toHaveLength(3);
  });
});
