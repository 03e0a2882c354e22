import { Tokenize } from 'rtf-stream-parser';
// The package's plain-text reader is not re-exported from its index; it is the same maintained code its
// de-encapsulation uses (code pages, \uN with \ucN skips, \'hh, fonts, optional destinations).
import { ToPlainText } from 'rtf-stream-parser/dist/src/ToPlainText.js';

/**
 * RTF (Epic and many dictation systems store notes this way) as plain text. Only text reaches the reader:
 * control words, the font and colour tables, pictures, embedded objects, field instructions, headers and
 * footers and every `{\*\destination}` group are dropped; table cells and rows, pages and sections become
 * tabs and line breaks.
 */

/** The token kinds of rtf-stream-parser's tokenizer (a const enum in its types, so not importable here). */
const groupStart = 0;
const groupEnd = 1;
const control = 2;

interface RtfToken {
  type: number;
  word?: string;
  param?: number;
  data?: Buffer;
}

/**
 * Destinations (groups that open with one of these words) that hold no note text a reader would see in the
 * body: pictures and objects as hex, document properties, running headers and footers (the patient's name on
 * every page), field instructions (HYPERLINK "..."; the field's result is kept), themes and style data.
 */
const hiddenDestinations = new Set([
  'pict',
  'shppict',
  'nonshppict',
  'object',
  'objdata',
  'objclass',
  'result',
  'info',
  'header',
  'headerl',
  'headerr',
  'headerf',
  'footer',
  'footerl',
  'footerr',
  'footerf',
  'fldinst',
  'themedata',
  'colorschememapping',
  'datastore',
  'latentstyles',
  'xmlnstbl',
  'listtable',
  'listoverridetable',
  'rsidtbl',
  'stylesheet',
  'colortbl',
  'filetbl',
  'revtbl',
  'generator',
  'pntext',
  'pntxta',
  'pntxtb',
  'bkmkstart',
  'bkmkend',
  'atnauthor',
  'atnid',
]);

/** Structure that ToPlainText leaves out, said in the words it understands. */
const structureAsText: Record<string, string> = { cell: 'tab', row: 'par', page: 'par', sect: 'par' };

/** Why an RTF note gave no text: the reader names only the cause, never the note's content. */
export class RtfReadError extends Error {}

function decodeCodePage(bytes: Buffer, encoding: string): string {
  try {
    return new TextDecoder(encoding).decode(bytes);
  } catch {
    // A code page Node's decoder does not know: Windows-1252 is what nearly every RTF writer means.
    return new TextDecoder('windows-1252').decode(bytes);
  }
}

/** The text of an RTF document; throws RtfReadError when it is not RTF or is malformed beyond reading. */
export function rtfToText(rtf: Buffer): string {
  if (!rtf.subarray(0, 16).toString('latin1').trimStart().startsWith('{\\rtf')) {
    throw new RtfReadError('not an RTF document (no {\\rtf header)');
  }
  const tokenizer = new Tokenize();
  const reader = new ToPlainText({
    decode: decodeCodePage,
    // Symbol and Wingdings bullets and check boxes as the Unicode characters they draw.
    replaceSymbolFontChars: true,
    // The library's warnings can quote control words only; they are not useful in the service's log.
    warn: () => {},
  });
  const chunks: string[] = [];
  const failed = (error: unknown) => {
    if (error) throw new RtfReadError(`malformed RTF: ${error instanceof Error ? error.message : error}`);
  };
  reader.push = (chunk: unknown) => {
    if (typeof chunk === 'string') chunks.push(chunk);
    return true;
  };
  // Which groups are being dropped: depth counts groups opened inside a hidden destination.
  let hiddenDepth = 0;
  let pendingGroupStart = false;
  const forward = (token: RtfToken) => reader._transform(token as never, '', failed);
  tokenizer.push = (chunk: unknown) => {
    if (chunk === null) return true;
    const token = chunk as RtfToken;
    if (hiddenDepth > 0) {
      if (token.type === groupStart) hiddenDepth++;
      if (token.type === groupEnd) hiddenDepth--;
      return true;
    }
    if (pendingGroupStart) {
      pendingGroupStart = false;
      if (token.type === control && token.word && hiddenDestinations.has(token.word)) {
        hiddenDepth = 1;
        return true;
      }
      forward({ type: groupStart });
    }
    if (token.type === groupStart) {
      pendingGroupStart = true;
      return true;
    }
    const replacement = token.type === control && token.word ? structureAsText[token.word] : undefined;
    forward(replacement ? { type: control, word: replacement } : token);
    return true;
  };
  try {
    tokenizer._transform(rtf, undefined, failed);
    tokenizer._flush(() => {});
    reader._flush(failed);
  } catch (error) {
    if (error instanceof RtfReadError) throw error;
    throw new RtfReadError(`malformed RTF: ${error instanceof Error ? error.message : String(error)}`);
  }
  return chunks
    .join('')
    .replace(/\r\n?/g, '\n')
    .replace(/[ \t\u00a0]+\n/g, '\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}
