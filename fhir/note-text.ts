import type { Attachment, Binary, DocumentReference } from 'fhir/r4.js';
import type { FhirClient } from './fhir-client.ts';
import { cdaToText, isClinicalDocument } from './note-formats/cda.ts';
import { htmlToText } from './note-formats/html.ts';
import { pdfToText } from './note-formats/pdf.ts';
import { rtfToText } from './note-formats/rtf.ts';
import { UnreadableNoteError } from './note-formats/unreadable-note.ts';
import { outcomeError } from './operation-outcome.ts';
import { PatientScopedReader } from './patient-scope.ts';

/**
 * A note's text from `attachment.data` (base64) or `attachment.url` (a Binary), in the formats hospitals store
 * notes in (fhir/note-formats/), honouring the charset of textual ones.
 */

export function charsetOf(contentType: string | undefined): string {
  const match = /charset\s*=\s*"?([A-Za-z0-9._-]+)"?/i.exec(contentType ?? '');
  return match ? match[1].toLowerCase() : 'utf-8';
}

export function decodeBase64Text(data: string, contentType: string | undefined): string {
  return decodeText(Buffer.from(data, 'base64'), contentType);
}

function decodeText(bytes: Buffer, contentType: string | undefined): string {
  let decoder: TextDecoder;
  try {
    decoder = new TextDecoder(charsetOf(contentType));
  } catch {
    // An unknown charset label: UTF-8 is what nearly every server means.
    decoder = new TextDecoder('utf-8');
  }
  // The decoder drops a byte-order mark for UTF-8/16; notes exported from Windows tools often carry one.
  return decoder.decode(bytes);
}

/**
 * The formats a note's text is read from, in the order an attachment is preferred when a note has several
 * (the same note as plain text and as a PDF rendition: plain text is the most faithful and cheapest).
 */
const formatPreference = ['plain', 'html', 'xml', 'rtf', 'pdf'] as const;
export type NoteFormat = (typeof formatPreference)[number];

/** The format of an attachment from its content type, or undefined for one the service cannot read (images). */
export function noteFormat(contentType: string | undefined): NoteFormat | undefined {
  const type = (contentType ?? '').split(';')[0].trim().toLowerCase();
  // No content type: read as plain text, as the service always has (a server that leaves it out stores text).
  if (type === '' || type === 'text/plain' || type === 'text/markdown' || type === 'application/json')
    return 'plain';
  if (type === 'text/html' || type === 'application/xhtml+xml') return 'html';
  if (type === 'text/rtf' || type === 'application/rtf') return 'rtf';
  if (type === 'application/pdf') return 'pdf';
  if (type === 'text/xml' || type === 'application/xml' || type.endsWith('+xml')) return 'xml';
  if (type.startsWith('text/')) return 'plain';
  return undefined;
}

export { UnreadableNoteError, type UnreadableReason } from './note-formats/unreadable-note.ts';

/** The attachment a note's text is read from (see formatPreference), or undefined when it has none readable. */
export function textAttachment(document: DocumentReference): Attachment | undefined {
  const readable = (document.content ?? [])
    .map((content) => content.attachment)
    .filter((attachment): attachment is Attachment =>
      Boolean(attachment && (attachment.data || attachment.url) && noteFormat(attachment.contentType)),
    );
  const rank = (attachment: Attachment) =>
    formatPreference.indexOf(noteFormat(attachment.contentType) as NoteFormat);
  return readable.reduce<Attachment | undefined>(
    (best, attachment) => (best === undefined || rank(attachment) < rank(best) ? attachment : best),
    undefined,
  );
}

/** Text of the formats read without waiting (all but PDF). */
function syncText(
  bytes: Buffer,
  contentType: string | undefined,
  format: Exclude<NoteFormat, 'pdf'>,
): string {
  if (format === 'rtf') {
    try {
      // RTF is 7-bit text that names its own code pages: the content type's charset does not apply.
      return rtfToText(bytes);
    } catch (error) {
      throw new UnreadableNoteError('unreadable', error instanceof Error ? error.message : 'unreadable RTF');
    }
  }
  const text = decodeText(bytes, contentType);
  if (format === 'html') return htmlToText(text);
  if (format === 'xml')
    return isClinicalDocument(text) ? cdaToText(text) : htmlToText(text, { xmlMode: true });
  return text;
}

async function attachmentText(
  bytes: Buffer,
  contentType: string | undefined,
  maxCharacters: number,
): Promise<string> {
  const format = noteFormat(contentType) ?? 'plain';
  if (format !== 'pdf') return capNoteText(syncText(bytes, contentType, format), maxCharacters);
  // pdfToText throws UnreadableNoteError itself (no text layer, over a cap, timed out).
  return capNoteText(await pdfToText(bytes), maxCharacters);
}

/**
 * Longest note text kept, in characters: a long discharge summary fits many times over, and it is at
 * least the longest draft the service itself accepts, so its own drafts are never cut.
 */
export const defaultMaxNoteCharacters = 200_000;

/** The marker that ends a note cut at the cap, so a reader (or the model) sees that text is missing. */
export function truncationMarker(maxCharacters: number): string {
  return `[... note truncated at ${maxCharacters} characters]`;
}

/** The text, cut at the cap with a visible marker (never between the two halves of a surrogate pair). */
export function capNoteText(text: string, maxCharacters = defaultMaxNoteCharacters): string {
  if (text.length <= maxCharacters) return text;
  let end = maxCharacters;
  const last = text.charCodeAt(end - 1);
  if (last >= 0xd800 && last <= 0xdbff) end--;
  return `${text.slice(0, end)}\n${truncationMarker(maxCharacters)}`;
}

/**
 * The text of a note whose attachment carries its data inline, read without waiting; undefined when it must
 * be fetched (an attachment URL) or is a PDF (read with readNoteText). Throws UnreadableNoteError.
 */
export function inlineNoteText(
  document: DocumentReference,
  maxCharacters = defaultMaxNoteCharacters,
): string | undefined {
  const attachment = textAttachment(document);
  const format = noteFormat(attachment?.contentType);
  if (!attachment?.data || format === 'pdf' || format === undefined) return undefined;
  return capNoteText(
    syncText(Buffer.from(attachment.data, 'base64'), attachment.contentType, format),
    maxCharacters,
  );
}

/** The text of a Binary fetched for a note's attachment URL. Throws UnreadableNoteError. */
export async function binaryNoteText(
  document: DocumentReference,
  binary: Binary | undefined,
  maxCharacters = defaultMaxNoteCharacters,
): Promise<string> {
  const attachment = textAttachment(document);
  if (binary?.resourceType !== 'Binary' || typeof binary.data !== 'string') {
    throw outcomeError(
      'invalid',
      `attachment of DocumentReference/${document.id} did not resolve to a Binary with data`,
      502,
    );
  }
  // The Binary's own type (with its charset) is what the server knows of the bytes, unless it is one that says
  // nothing of a note (application/octet-stream): then the attachment's type says what they are.
  const contentType = noteFormat(binary.contentType)
    ? binary.contentType
    : (attachment?.contentType ?? binary.contentType);
  return attachmentText(Buffer.from(binary.data, 'base64'), contentType, maxCharacters);
}

/**
 * Reads a note's text, in any format the service reads (plain text, HTML, C-CDA and other XML, RTF, PDF with a
 * text layer). Through a PatientScopedReader (what event processing uses), an attachment URL is fetched only
 * for a note already admitted to the patient's compartment; either way the client refuses a URL on another
 * origin, so the token never travels to a host it is not for. Throws UnreadableNoteError for an attachment that
 * gives no text (a scanned PDF, a malformed RTF).
 */
export async function readNoteText(
  source: FhirClient | PatientScopedReader,
  document: DocumentReference,
  maxCharacters = defaultMaxNoteCharacters,
): Promise<string | undefined> {
  const attachment = textAttachment(document);
  if (!attachment) return undefined;
  if (attachment.data)
    return attachmentText(Buffer.from(attachment.data, 'base64'), attachment.contentType, maxCharacters);
  const url = attachment.url as string;
  const binary =
    source instanceof PatientScopedReader
      ? await source.noteAttachment(document, url)
      : await source.get<Binary>(url);
  return binaryNoteText(document, binary, maxCharacters);
}
