import { getResolvedPDFJS } from 'unpdf';
import { defaultPdfLimits, type PdfLimits } from './pdf.ts';
import { UnreadableNoteError } from './unreadable-note.ts';

/**
 * The text layer of a PDF, read in this thread (pdf.js, through unpdf's build for servers). The service calls
 * it through pdf.ts, which runs it in a worker thread it can stop; see there. A scanned PDF has no text layer:
 * that is said as such (UnreadableNoteError with reason `no-text-layer`) rather than guessed at, since OCR output is
 * not something to summarise unchecked. Work is bounded: bytes before parsing, pages read, and time.
 */

interface TextItemLike {
  str?: unknown;
  hasEOL?: unknown;
}

function pageText(items: TextItemLike[]): string {
  let text = '';
  for (const item of items) {
    if (typeof item.str === 'string') text += item.str;
    if (item.hasEOL === true) text += '\n';
  }
  return text
    .split('\n')
    .map((line) => line.replace(/[ \t]+/g, ' ').trim())
    .join('\n');
}

/** The text of a PDF's pages (as far as the limits allow), pages separated by blank lines. */
export async function readTextLayer(
  bytes: Uint8Array,
  limits: PdfLimits = defaultPdfLimits,
): Promise<string> {
  if (bytes.byteLength > limits.maxBytes) {
    throw new UnreadableNoteError(
      'too-large',
      `PDF of ${bytes.byteLength} bytes is over the ${limits.maxBytes}-byte limit`,
    );
  }
  if (Buffer.from(bytes.subarray(0, 1024)).indexOf('%PDF-') < 0) {
    throw new UnreadableNoteError('unreadable', 'not a PDF document (no %PDF- header)');
  }
  const deadline = Date.now() + limits.timeoutMs;
  let timer: NodeJS.Timeout | undefined;
  const timedOut = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () => reject(new UnreadableNoteError('timed-out', `PDF text not read within ${limits.timeoutMs} ms`)),
      limits.timeoutMs,
    );
  });
  // Raced below, perhaps only after it fired: handled here so a timeout before the race is not an unhandled rejection.
  timedOut.catch(() => undefined);
  // pdf.js takes ownership of the buffer it is given: hand it a copy so the caller's bytes stay intact.
  const { getDocument } = await getResolvedPDFJS();
  const loading = getDocument({
    data: new Uint8Array(bytes),
    disableFontFace: true,
    useSystemFonts: false,
    stopAtErrors: false,
    verbosity: 0,
  });
  try {
    const document = await Promise.race([loading.promise, timedOut]);
    const pages: string[] = [];
    const pageCount = Math.min(document.numPages, limits.maxPages);
    for (let number = 1; number <= pageCount; number++) {
      if (Date.now() > deadline)
        throw new UnreadableNoteError('timed-out', `PDF text not read within ${limits.timeoutMs} ms`);
      const page = await Promise.race([document.getPage(number), timedOut]);
      const content = await Promise.race([page.getTextContent(), timedOut]);
      pages.push(pageText(content.items as TextItemLike[]));
      page.cleanup();
    }
    const text = pages
      .join('\n\n')
      .replace(/\n{3,}/g, '\n\n')
      .trim();
    if (text.replace(/\s/g, '') === '') {
      throw new UnreadableNoteError('no-text-layer', 'PDF has no text layer (a scanned image?)');
    }
    const left = document.numPages - pageCount;
    return left > 0 ? `${text}\n\n[... ${left} more pages not read]` : text;
  } catch (error) {
    if (error instanceof UnreadableNoteError) throw error;
    throw new UnreadableNoteError(
      'unreadable',
      `PDF could not be read: ${error instanceof Error ? error.name : 'error'}`,
    );
  } finally {
    clearTimeout(timer);
    // Stops pdf.js's work on this document (also after a timeout) and frees its memory.
    await loading.destroy().catch(() => undefined);
  }
}
