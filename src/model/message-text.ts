import type { BaseMessage } from '@langchain/core/messages';

/** A LangChain message's text, whether its content is a string or a list of parts. */
export function messageText(message: BaseMessage): string {
  return typeof message.content === 'string'
    ? message.content
    : message.content
        .map((part) =>
          typeof part === 'string' ? part : 'text' in part && typeof part.text === 'string' ? part.text : '',
        )
        .join('');
}
