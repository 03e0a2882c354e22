import { encode as encodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import { describe, expect, it } from 'vitest';
import { ImageRejectedError, prepareImage } from '../../fhir/imaging/image-preparation.ts';
import { prepareImageOffThread } from '../../fhir/imaging/image-preparation-thread.ts';
import { halvesJpeg, halvesPng } from './synthetic-images.ts';

/**
 * Every image is capped and downscaled before a model sees it: what leaves is a fresh JPEG of at most
 * maxDimension on its longest side, whatever came in; bytes that are not what they claim, and images
 * whose header declares more pixels than the cap (a decompression bomb), are refused before decoding.
 */
const limits = { maxInputBytes: 5_000_000, maxInputPixels: 20_000_000, maxDimension: 896 };

function problemOf(run: () => unknown): string | undefined {
  try {
    run();
    return undefined;
  } catch (error) {
    if (error instanceof ImageRejectedError) return error.problem;
    throw error;
  }
}

describe('image preparation: capped, checked and downscaled before any model', () => {
  it('downscales a large PNG and JPEG to fit 896 pixels, keeping the aspect ratio and the picture', () => {
    const fromPng = prepareImage(halvesPng(3000, 1500), limits);
    expect([fromPng.width, fromPng.height]).toEqual([896, 448]);
    expect(fromPng.original).toEqual({ format: 'png', width: 3000, height: 1500, bytes: expect.any(Number) });
    const decoded = jpeg.decode(fromPng.jpeg, { useTArray: true });
    expect([decoded.width, decoded.height]).toEqual([896, 448]);
    expect(decoded.data[(200 * 896 + 100) * 4]).toBeGreaterThan(230);
    expect(decoded.data[(200 * 896 + 800) * 4]).toBeLessThan(25);

    const fromJpeg = prepareImage(halvesJpeg(500, 2000), limits);
    expect([fromJpeg.width, fromJpeg.height]).toEqual([224, 896]);
  });

  it('re-encodes a small image without enlarging it', () => {
    const small = prepareImage(halvesPng(120, 80), limits);
    expect([small.width, small.height]).toEqual([120, 80]);
    expect(Buffer.from(small.jpeg.subarray(0, 3))).toEqual(Buffer.from([0xff, 0xd8, 0xff]));
  });

  it('reads 16-bit greyscale PNGs (common for medical images)', () => {
    const width = 64;
    const height = 32;
    const data = new Uint16Array(width * height);
    for (let index = 0; index < data.length; index++) data[index] = index % width < width / 2 ? 65535 : 0;
    const png = Buffer.from(encodePng({ width, height, data, channels: 1, depth: 16 }));
    const prepared = prepareImage(png, limits);
    const decoded = jpeg.decode(prepared.jpeg, { useTArray: true });
    expect(decoded.data[(10 * width + 5) * 4]).toBeGreaterThan(230);
    expect(decoded.data[(10 * width + 60) * 4]).toBeLessThan(25);
  });

  it('refuses bytes that are not a JPEG or PNG, whatever the content type said', () => {
    expect(problemOf(() => prepareImage(Buffer.from('%PDF-1.7 not an image'), limits))).toBe('not-an-image');
    expect(problemOf(() => prepareImage(Buffer.from('GIF89a....'), limits))).toBe('not-an-image');
  });

  it('refuses a file over the byte cap and a header declaring more pixels than the cap, before decoding', () => {
    expect(problemOf(() => prepareImage(Buffer.alloc(5_000_001, 0xff), limits))).toBe('too-large');
    // A real PNG header claiming 30000 x 30000 pixels with almost no data: refused from the header.
    const bomb = Buffer.from(halvesPng(10, 10));
    bomb.writeUInt32BE(30_000, 16);
    bomb.writeUInt32BE(30_000, 20);
    expect(problemOf(() => prepareImage(bomb, limits))).toBe('too-large');
    // The same for a JPEG's frame header.
    const jpegBomb = Buffer.from(halvesJpeg(16, 16));
    const frame = jpegBomb.indexOf(Buffer.from([0xff, 0xc0]));
    jpegBomb.writeUInt16BE(30_000, frame + 5);
    jpegBomb.writeUInt16BE(30_000, frame + 7);
    expect(problemOf(() => prepareImage(jpegBomb, limits))).toBe('too-large');
  });

  it('refuses a truncated image as undecodable', () => {
    const truncated = halvesPng(200, 200).subarray(0, 60);
    expect(problemOf(() => prepareImage(truncated, limits))).toBe('undecodable');
  });

  it('prepares off the main thread: the event loop keeps answering while a large image is decoded', async () => {
    const large = halvesJpeg(3000, 2000);
    let longestPause = 0;
    let last = performance.now();
    const ticker = setInterval(() => {
      const now = performance.now();
      longestPause = Math.max(longestPause, now - last);
      last = now;
    }, 10);
    const startedAt = performance.now();
    try {
      const prepared = await prepareImageOffThread(large, limits);
      expect([prepared.width, prepared.height]).toEqual([896, 597]);
    } finally {
      clearInterval(ticker);
    }
    const took = performance.now() - startedAt;
    // Decoding 6 megapixels takes far longer than any pause the main thread saw meanwhile.
    expect(longestPause).toBeLessThan(Math.max(250, took / 3));
    await expect(prepareImageOffThread(Buffer.from('not an image at all'), limits)).rejects.toMatchObject({
      problem: 'not-an-image',
    });
  });
});
