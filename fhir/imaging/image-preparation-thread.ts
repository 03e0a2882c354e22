import { Worker } from 'node:worker_threads';
import {
  type ImageLimits,
  type ImageProblem,
  ImageRejectedError,
  type PreparedImage,
} from './image-preparation.ts';

/**
 * Image preparation off the main thread. Decoding a large JPEG in pure JavaScript takes from half a second to a
 * few seconds on a busy host: on the main thread that would stall every HTTP answer (the FHIR server's
 * notifications must be answered at once) and the other jobs. One worker thread, started on first use, takes the
 * images in turn and stops after a minute without work; it never keeps the process alive.
 */
interface Pending {
  resolve: (prepared: PreparedImage) => void;
  reject: (error: Error) => void;
}

const idleMs = 60_000;
let worker: Worker | undefined;
let idleTimer: NodeJS.Timeout | undefined;
let nextId = 0;
const pending = new Map<number, Pending>();

function failAll(error: Error): void {
  for (const entry of pending.values()) entry.reject(error);
  pending.clear();
}

function startWorker(): Worker {
  const started = new Worker(new URL('./image-preparation-worker.ts', import.meta.url));
  started.unref();
  started.on(
    'message',
    (message: {
      id: number;
      prepared?: PreparedImage;
      rejected?: { problem: ImageProblem; message: string };
    }) => {
      const entry = pending.get(message.id);
      if (!entry) return;
      pending.delete(message.id);
      if (message.prepared)
        entry.resolve({ ...message.prepared, jpeg: new Uint8Array(message.prepared.jpeg) });
      else
        entry.reject(
          new ImageRejectedError(message.rejected?.problem ?? 'undecodable', message.rejected?.message ?? ''),
        );
      scheduleIdleStop();
    },
  );
  // A crash (out of memory on a hostile image) fails the images in flight; the next one starts a new thread.
  started.on('error', (error) => {
    if (worker === started) worker = undefined;
    failAll(new ImageRejectedError('undecodable', `the image thread failed: ${error.message}`));
  });
  started.on('exit', () => {
    if (worker === started) worker = undefined;
    failAll(new ImageRejectedError('undecodable', 'the image thread stopped'));
  });
  return started;
}

function scheduleIdleStop(): void {
  if (idleTimer) clearTimeout(idleTimer);
  if (pending.size > 0) return;
  idleTimer = setTimeout(() => {
    if (pending.size === 0) void worker?.terminate();
  }, idleMs);
  idleTimer.unref();
}

/** prepareImage (image-preparation.ts) on the image thread: same checks, same result, same ImageRejectedError. */
export function prepareImageOffThread(bytes: Uint8Array, limits: ImageLimits): Promise<PreparedImage> {
  // The byte cap is checked here too, so an oversized file is never copied to the thread.
  if (bytes.length > limits.maxInputBytes)
    return Promise.reject(
      new ImageRejectedError('too-large', `image of ${bytes.length} bytes is over the cap`),
    );
  if (idleTimer) clearTimeout(idleTimer);
  worker ??= startWorker();
  const id = nextId++;
  return new Promise<PreparedImage>((resolve, reject) => {
    pending.set(id, { resolve, reject });
    worker?.postMessage({ id, bytes, limits });
  });
}
