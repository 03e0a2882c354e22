import { Worker } from 'node:worker_threads';
import { UnreadableNoteError, type UnreadableReason } from './unreadable-note.ts';

/**
 * The text layer of a PDF note, read in a worker thread: pdf.js parses in the thread that calls it, and a
 * hostile or huge PDF could hold that thread (the service's event loop) for as long as it likes. The thread is
 * stopped at the time limit, and its heap is capped, so one PDF cannot hang or exhaust the service.
 */

export interface PdfLimits {
  /** Largest PDF read, in bytes. */
  maxBytes: number;
  /** Pages read from the start; a longer document's further pages are left out, with a marker. */
  maxPages: number;
  /** Time allowed for the whole document, in milliseconds (from its turn to be read). */
  timeoutMs: number;
}

export const defaultPdfLimits: PdfLimits = { maxBytes: 20 * 1024 * 1024, maxPages: 50, timeoutMs: 10_000 };

/** Heap allowed to the thread reading one PDF, in megabytes. */
const workerHeapMb = 256;

/** What the worker is asked, and what it answers: the text, or why there is none. */
export interface PdfWorkerRequest {
  id: number;
  bytes: Uint8Array;
  limits: PdfLimits;
}
export type PdfWorkerAnswer = { id: number } & (
  | { text: string }
  | { reason: UnreadableReason; message: string }
);

interface PdfJob extends PdfWorkerRequest {
  resolve: (text: string) => void;
  reject: (error: UnreadableNoteError) => void;
}

/** An idle reader thread is stopped after this long (it holds pdf.js in memory). */
const idleMs = 30_000;

/**
 * One reader thread, kept between PDFs so pdf.js loads once; PDFs are read one at a time (they are CPU-bound,
 * and the machine's cores are shared with everything else). A PDF over its time limit stops the thread; the
 * next PDF starts a new one.
 */
const queue: PdfJob[] = [];
let current: PdfJob | undefined;
let reader: Worker | undefined;
let deadline: NodeJS.Timeout | undefined;
let idle: NodeJS.Timeout | undefined;
let nextId = 1;

function finish(job: PdfJob, outcome: { text: string } | UnreadableNoteError) {
  if (current !== job) return;
  current = undefined;
  clearTimeout(deadline);
  if (outcome instanceof UnreadableNoteError) job.reject(outcome);
  else job.resolve(outcome.text);
  startNext();
}

function stopReader() {
  const stopping = reader;
  reader = undefined;
  void stopping?.terminate();
}

function startReader(): Worker {
  const worker = new Worker(new URL('./pdf-worker.ts', import.meta.url), {
    resourceLimits: { maxOldGenerationSizeMb: workerHeapMb },
    // The process's own flags, less those that only apply to a script given as text (`node -e`), which a
    // thread started from a file refuses.
    execArgv: process.execArgv.filter((flag) => !flag.startsWith('--input-type')),
    // pdf.js may print warnings quoting the document: they are not for the service's log.
    stdout: true,
    stderr: true,
  });
  worker.on('message', (answer: PdfWorkerAnswer) => {
    if (!current || current.id !== answer.id) return;
    finish(current, 'text' in answer ? answer : new UnreadableNoteError(answer.reason, answer.message));
  });
  // A thread already stopped (at a time limit) is no longer the reader: its end says nothing of the PDF now read.
  worker.on('error', (error: Error & { code?: string }) => {
    if (reader !== worker) return;
    reader = undefined;
    if (!current) return;
    finish(
      current,
      error.code === 'ERR_WORKER_OUT_OF_MEMORY'
        ? new UnreadableNoteError('too-large', `PDF needed more than ${workerHeapMb} MB to read`)
        : new UnreadableNoteError('unreadable', `PDF could not be read: ${error.name}`),
    );
  });
  worker.on('exit', () => {
    if (reader !== worker) return;
    reader = undefined;
    if (current)
      finish(current, new UnreadableNoteError('unreadable', 'PDF reader stopped without an answer'));
  });
  // An idle reader never keeps the process alive (a PDF being read does, through its deadline). After the
  // listeners: adding a message listener refs the thread again.
  worker.unref();
  return worker;
}

function startNext() {
  if (current) return;
  const job = queue.shift();
  clearTimeout(idle);
  if (!job) {
    idle = setTimeout(stopReader, idleMs).unref();
    return;
  }
  current = job;
  reader ??= startReader();
  deadline = setTimeout(() => {
    stopReader();
    finish(job, new UnreadableNoteError('timed-out', `PDF text not read within ${job.limits.timeoutMs} ms`));
  }, job.limits.timeoutMs);
  const request: PdfWorkerRequest = { id: job.id, bytes: job.bytes, limits: job.limits };
  reader.postMessage(request, [job.bytes.buffer as ArrayBuffer]);
}

/** The text of a PDF's pages (as far as the limits allow), pages separated by blank lines. */
export function pdfToText(bytes: Uint8Array, limits: PdfLimits = defaultPdfLimits): Promise<string> {
  // Checked here too, so an oversized PDF is not even copied to the thread.
  if (bytes.byteLength > limits.maxBytes) {
    return Promise.reject(
      new UnreadableNoteError(
        'too-large',
        `PDF of ${bytes.byteLength} bytes is over the ${limits.maxBytes}-byte limit`,
      ),
    );
  }
  return new Promise<string>((resolve, reject) => {
    // A copy of its own: the bytes are moved to the thread, and the caller's stay intact.
    queue.push({ id: nextId++, bytes: new Uint8Array(bytes), limits, resolve, reject });
    startNext();
  });
}
