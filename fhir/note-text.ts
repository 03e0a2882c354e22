import type { Attachment, Binary, DocumentReference } from 'fhir/r4.js';
import type { FhirClient } from './fhir-client.ts';
import { outcomeError } from './operation-outcome.ts';
import { PatientScopedReader } from './patient-scope.ts';

/** Decodes a note's text from `attachment.data` (base64) or `attachment.url` (a Binary), honouring the charset. */
export function charsetOf(contentType: string | undefined): string {
  const match = /charset\s*=\s*"?([A-Za-z0-9._-]+)"?/i.exec(contentType ?? '');
  return match ? match[1].toLowerCase() : 'utf-8';
}

export function decodeBase64Text(data: string, contentType: string | undefined): string {
  const bytes = Buffer.from(data, 'base64');
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

function isTextual(contentType: string | undefined): boolean {
  return !contentType || /^text\//i.test(contentType) || /xhtml|json|xml/i.test(contentType);
}

/** The best textual attachment of a note (plain text first), or undefined when it has none. */
export function textAttachment(document: DocumentReference): Attachment | undefined {
  const attachments = (document.content ?? [])
    .map((content) => content.attachment)
    .filter(isTextualAttachment);
  return (
    attachments.find((attachment) => /^text\/plain/i.test(attachment.contentType ?? '')) ?? attachments[0]
  );
}

function isTextualAttachment(attachment: Attachment | undefined): attachment is Attachment {
  return Boolean(attachment && (attachment.data || attachment.url) && isTextual(attachment.contentType));
}

function stripMarkup(text: string, contentType: string | undefined): string {
  if (!/html|xml/i.test(contentType ?? '')) return text;
  return text
    .replace(/<(script|style)[^>]*>[\s\S]*?<\/\1>/gi, '')
    .replace(/<br\s*\/?>|<\/(p|div|li|h\d)>/gi, '\n')
    .replace(/<[^>]+>/g, '')
    .replace(/&nbsp;/g, ' ')
    .replace(/&lt;/g, '<')
    .replace(/&gt;/g, '>')
    .replace(/&amp;/g, '&');
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

function decodedText(data: string, contentType: string | undefined, maxCharacters: number): string {
  return capNoteText(stripMarkup(decodeBase64Text(data, contentType), contentType), maxCharacters);
}

/** The text of a note whose attachment carries its data inline; undefined when it must be fetched. */
export function inlineNoteText(
  document: DocumentReference,
  maxCharacters = defaultMaxNoteCharacters,
): string | undefined {
  const attachment = textAttachment(document);
  if (!attachment?.data) return undefined;
  return decodedText(attachment.data, attachment.contentType, maxCharacters);
}

/** The text of a Binary fetched for a note's attachment URL. */
export function binaryNoteText(
  document: DocumentReference,
  binary: Binary | undefined,
  maxCharacters = defaultMaxNoteCharacters,
): string {
  const attachment = textAttachment(document);
  if (binary?.resourceType !== 'Binary' || typeof binary.data !== 'string') {
    throw outcomeError(
      'invalid',
      `attachment of DocumentReference/${document.id} did not resolve to a Binary with data`,
      502,
    );
  }
  return decodedText(binary.data, binary.contentType ?? attachment?.contentType, maxCharacters);
}

/**
 * Reads a note's text. Through a PatientScopedReader (what event processing uses), an attachment URL
 * is fetched only for a note already admitted to the patient's compartment; either way the client
 * refuses a URL on another origin, so the token never travels to a host it is not for.
 */
export async function readNoteText(
  source: FhirClient | PatientScopedReader,
  document: DocumentReference,
  maxCharacters = defaultMaxNoteCharacters,
): Promise<string | undefined> {
  const attachment = textAttachment(document);
  if (!attachment) return undefined;
  if (attachment.data) return decodedText(attachment.data, attachment.contentType, maxCharacters);
  const url = attachment.url as string;
  const binary =
    source instanceof PatientScopedReader
      ? await source.noteAttachment(document, url)
      : await source.get<Binary>(url);
  return binaryNoteText(document, binary, maxCharacters);
}
