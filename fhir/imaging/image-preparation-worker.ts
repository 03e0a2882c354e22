import { parentPort } from 'node:worker_threads';
import { type ImageLimits, ImageRejectedError, prepareImage } from './image-preparation.ts';

/** The thread image-preparation-thread.ts starts: decodes, downscales and re-encodes one image per message. */
parentPort?.on('message', (message: { id: number; bytes: Uint8Array; limits: ImageLimits }) => {
  try {
    const prepared = prepareImage(message.bytes, message.limits);
    // A copy of its own (the encoder's bytes may sit in a shared Buffer pool), handed over without another copy.
    const jpeg = prepared.jpeg.slice();
    parentPort?.postMessage({ id: message.id, prepared: { ...prepared, jpeg } }, [jpeg.buffer]);
  } catch (error) {
    parentPort?.postMessage({
      id: message.id,
      rejected:
        error instanceof ImageRejectedError
          ? { problem: error.problem, message: error.message }
          : { problem: 'undecodable', message: 'the image could not be prepared' },
    });
  }
});
