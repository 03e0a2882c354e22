import { describe, expect, it } from 'vitest';
import { renderGemmaPrompt, stripThinking, toGemmaTurns } from '../../src/model/gemma-turns.ts';

describe('Gemma turns', () => {
  it('folds the system text into the first user turn and merges turns of the same role', () => {
    expect(
      toGemmaTurns([
        { role: 'system', content: 'Be brief.' },
        { role: 'user', content: 'First.' },
        { role: 'assistant', content: '{"a":1}' },
        { role: 'user', content: 'Result one.' },
        { role: 'user', content: 'Result two.' },
      ]),
    ).toEqual([
      { role: 'user', content: 'Be brief.\n\nFirst.' },
      { role: 'assistant', content: '{"a":1}' },
      { role: 'user', content: 'Result one.\n\nResult two.' },
    ]);
  });

  it('starts with a user turn even when the conversation starts with the model', () => {
    const turns = toGemmaTurns([
      { role: 'system', content: 'Rules.' },
      { role: 'assistant', content: 'Hello' },
    ]);
    expect(turns).toEqual([
      { role: 'user', content: 'Rules.' },
      { role: 'assistant', content: 'Hello' },
    ]);
    for (let index = 1; index < turns.length; index++)
      expect(turns[index].role).not.toBe(turns[index - 1].role);
  });

  it('does not mutate the messages it was given', () => {
    const messages = [
      { role: 'user' as const, content: 'a' },
      { role: 'user' as const, content: 'b' },
    ];
    toGemmaTurns(messages);
    expect(messages[0].content).toBe('a');
  });

  it('renders the Gemma 3 template', () => {
    expect(
      renderGemmaPrompt([
        { role: 'system', content: 'S' },
        { role: 'user', content: 'U' },
      ]),
    ).toBe('<bos><start_of_turn>user\nS\n\nU<end_of_turn>\n<start_of_turn>model\n');
  });

  it('strips thinking text, closed or left open', () => {
    expect(stripThinking('<unused94>thought\nhmm<unused95>{"x":1}')).toBe('{"x":1}');
    expect(stripThinking('{"x":1}<unused94>still thinking')).toBe('{"x":1}');
    expect(stripThinking('plain')).toBe('plain');
  });
});
