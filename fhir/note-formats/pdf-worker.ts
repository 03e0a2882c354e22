import { parentPort } from 'node:worker_threads';
import type { PdfWorkerAnswer, PdfWorkerRequest } from './pdf.ts';
import { readTextLayer } from './pdf-text-layer.ts';
import { UnreadableNoteError } from './unreadable-note.ts';

/** The PDF reader thread (started by pdf.ts, which stops it at a PDF's time limit): one PDF at a time. */
const port = parentPort;
port?.on('message', async ({ id, bytes, limits }: PdfWorkerRequest) => {
  let answer: PdfWorkerAnswer;
  try {
    answer = { id, text: await readTextLayer(bytes, limits) };
  } catch (error) {
    answer =
      error instanceof UnreadableNoteError
        ? { id, reason: error.reason, message: error.message }
        : {
            id,
            reason: 'unreadable',
            message: `PDF could not be read: ${error instanceof Error ? error.name : 'error'}`,
          };
  }
  port.postMessage(answer);
});
