import type { ChatMessage } from './provider.ts';

/**
 * Gemma 3 has no system role and requires user and model turns to alternate, starting with the
 * user. Servers running the stock template reject anything else, and in-process generation would
 * silently render it wrongly, so every backend gets messages shaped here.
 */
export function toGemmaTurns(messages: readonly ChatMessage[]): ChatMessage[] {
  const systemText = messages
    .filter((message) => message.role === 'system')
    .map((message) => message.content.trim())
    .filter((text) => text !== '')
    .join('\n\n');
  const turns: ChatMessage[] = [];
  for (const message of messages) {
    if (message.role === 'system') continue;
    const previous = turns.at(-1);
    // Two turns of the same role in a row (for example two tool results) become one turn.
    if (previous && previous.role === message.role) {
      previous.content = `${previous.content}\n\n${message.content}`;
    } else {
      turns.push({ role: message.role, content: message.content });
    }
  }
  if (turns.length === 0 || turns[0].role !== 'user') turns.unshift({ role: 'user', content: '' });
  if (systemText) {
    turns[0].content = turns[0].content ? `${systemText}\n\n${turns[0].content}` : systemText;
  }
  return turns;
}

/** MedGemma 27B may think aloud between `<unused94>` and `<unused95>`; that text is never output. */
export function stripThinking(text: string): string {
  return text
    .replace(/<unused94>[\s\S]*?(<unused95>|$)/g, '')
    .replace(/<unused95>/g, '')
    .trim();
}

/** The Gemma 3 prompt text for turns, for backends that take raw text and for counting tokens. */
export function renderGemmaPrompt(messages: readonly ChatMessage[]): string {
  const turns = toGemmaTurns(messages);
  const rendered = turns
    .map(
      (turn) =>
        `<start_of_turn>${turn.role === 'assistant' ? 'model' : 'user'}\n${turn.content.trim()}<end_of_turn>\n`,
    )
    .join('');
  return `<bos>${rendered}<start_of_turn>model\n`;
}
