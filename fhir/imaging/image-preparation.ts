import { convertIndexedToRgb, decode as decodePng } from 'fast-png';
import jpeg from 'jpeg-js';

/**
 * Every image is capped and downscaled here before anything is sent to a model: the bytes are checked
 * to be what they claim (a JPEG or PNG by its signature, whatever the content type said), the pixel
 * count is bounded before decoding (a small file can declare a huge image), and the picture is resized
 * to fit a square of `maxDimension` and re-encoded as a JPEG. What leaves this file is always a fresh
 * encoding of at most maxDimension x maxDimension pixels, never the bytes that came in.
 */
export interface ImageLimits {
  /** Largest encoded image accepted, in bytes. */
  maxInputBytes: number;
  /** Largest decoded image accepted, in pixels (width x height), checked from the header first. */
  maxInputPixels: number;
  /** Longest side of the image sent on (MedGemma and MedSigLIP read 896 and 448 pixel squares). */
  maxDimension: number;
}

export interface PreparedImage {
  /** A JPEG of at most maxDimension on its longest side. */
  jpeg: Uint8Array;
  width: number;
  height: number;
  original: { format: 'jpeg' | 'png'; width: number; height: number; bytes: number };
}

export type ImageProblem = 'not-an-image' | 'too-large' | 'undecodable';

export class ImageRejectedError extends Error {
  readonly problem: ImageProblem;

  constructor(problem: ImageProblem, message: string) {
    super(message);
    this.name = 'ImageRejectedError';
    this.problem = problem;
  }
}

export function sniffImageFormat(bytes: Uint8Array): 'jpeg' | 'png' | undefined {
  if (bytes.length >= 3 && bytes[0] === 0xff && bytes[1] === 0xd8 && bytes[2] === 0xff) return 'jpeg';
  const png = [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a];
  if (bytes.length >= 8 && png.every((value, index) => bytes[index] === value)) return 'png';
  return undefined;
}

/** Width and height from a PNG's IHDR (the first chunk, at a fixed offset). */
function pngSize(bytes: Uint8Array): { width: number; height: number } {
  if (bytes.length < 24) throw new ImageRejectedError('undecodable', 'PNG header cut short');
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  return { width: view.getUint32(16), height: view.getUint32(20) };
}

/** Width and height from a JPEG's first start-of-frame marker. */
function jpegSize(bytes: Uint8Array): { width: number; height: number } {
  let offset = 2;
  while (offset + 9 < bytes.length) {
    if (bytes[offset] !== 0xff) {
      offset++;
      continue;
    }
    const marker = bytes[offset + 1];
    // SOF0..SOF15 except DHT (C4), JPG (C8) and DAC (CC)
    if (marker >= 0xc0 && marker <= 0xcf && marker !== 0xc4 && marker !== 0xc8 && marker !== 0xcc) {
      return {
        height: (bytes[offset + 5] << 8) | bytes[offset + 6],
        width: (bytes[offset + 7] << 8) | bytes[offset + 8],
      };
    }
    if (marker === 0xd8 || marker === 0x01 || (marker >= 0xd0 && marker <= 0xd7)) {
      offset += 2;
      continue;
    }
    offset += 2 + ((bytes[offset + 2] << 8) | bytes[offset + 3]);
  }
  throw new ImageRejectedError('undecodable', 'JPEG without a frame header');
}

interface RgbaImage {
  width: number;
  height: number;
  /** 4 bytes per pixel. */
  data: Uint8Array;
}

function pngToRgba(bytes: Uint8Array): RgbaImage {
  const decoded = decodePng(bytes);
  const { width, height } = decoded;
  const rgba = new Uint8Array(width * height * 4);
  if (decoded.palette) {
    const rgb = convertIndexedToRgb(decoded);
    const channels = rgb.length / (width * height);
    for (let pixel = 0; pixel < width * height; pixel++) {
      rgba[pixel * 4] = rgb[pixel * channels];
      rgba[pixel * 4 + 1] = rgb[pixel * channels + 1];
      rgba[pixel * 4 + 2] = rgb[pixel * channels + 2];
      rgba[pixel * 4 + 3] = 255;
    }
    return { width, height, data: rgba };
  }
  if (decoded.depth !== 8 && decoded.depth !== 16)
    throw new ImageRejectedError('undecodable', `PNG bit depth ${decoded.depth} is not supported`);
  const channels = decoded.channels;
  // 16-bit samples keep their high byte (medical greyscale PNGs are often 16-bit).
  const sample = (index: number) =>
    decoded.depth === 16 ? decoded.data[index] >> 8 : (decoded.data[index] as number);
  for (let pixel = 0; pixel < width * height; pixel++) {
    const base = pixel * channels;
    const grey = channels <= 2;
    rgba[pixel * 4] = sample(base);
    rgba[pixel * 4 + 1] = grey ? sample(base) : sample(base + 1);
    rgba[pixel * 4 + 2] = grey ? sample(base) : sample(base + 2);
    rgba[pixel * 4 + 3] = 255;
  }
  return { width, height, data: rgba };
}

/** Area-averaging downscale: every source pixel contributes, so thin lines and text are not skipped. */
function downscale(image: RgbaImage, width: number, height: number): RgbaImage {
  if (width === image.width && height === image.height) return image;
  const out = new Uint8Array(width * height * 4);
  const xScale = image.width / width;
  const yScale = image.height / height;
  for (let y = 0; y < height; y++) {
    const top = Math.floor(y * yScale);
    const bottom = Math.max(top + 1, Math.floor((y + 1) * yScale));
    for (let x = 0; x < width; x++) {
      const left = Math.floor(x * xScale);
      const right = Math.max(left + 1, Math.floor((x + 1) * xScale));
      let red = 0;
      let green = 0;
      let blue = 0;
      for (let sourceY = top; sourceY < bottom; sourceY++) {
        for (let sourceX = left; sourceX < right; sourceX++) {
          const index = (sourceY * image.width + sourceX) * 4;
          red += image.data[index];
          green += image.data[index + 1];
          blue += image.data[index + 2];
        }
      }
      const count = (bottom - top) * (right - left);
      const target = (y * width + x) * 4;
      out[target] = Math.round(red / count);
      out[target + 1] = Math.round(green / count);
      out[target + 2] = Math.round(blue / count);
      out[target + 3] = 255;
    }
  }
  return { width, height, data: out };
}

export function prepareImage(bytes: Uint8Array, limits: ImageLimits): PreparedImage {
  if (bytes.length > limits.maxInputBytes)
    throw new ImageRejectedError('too-large', `image of ${bytes.length} bytes is over the cap`);
  const format = sniffImageFormat(bytes);
  if (!format) throw new ImageRejectedError('not-an-image', 'the bytes are neither a JPEG nor a PNG');
  const declared = format === 'png' ? pngSize(bytes) : jpegSize(bytes);
  if (declared.width < 1 || declared.height < 1)
    throw new ImageRejectedError('undecodable', 'image with no pixels');
  if (declared.width * declared.height > limits.maxInputPixels)
    throw new ImageRejectedError(
      'too-large',
      `image of ${declared.width}x${declared.height} pixels is over the cap of ${limits.maxInputPixels}`,
    );
  let decoded: RgbaImage;
  try {
    decoded =
      format === 'png'
        ? pngToRgba(bytes)
        : jpeg.decode(bytes, {
            useTArray: true,
            formatAsRGBA: true,
            maxResolutionInMP: limits.maxInputPixels / 1_000_000,
            maxMemoryUsageInMB: 512,
          });
  } catch (error) {
    if (error instanceof ImageRejectedError) throw error;
    throw new ImageRejectedError('undecodable', `the ${format} could not be decoded`);
  }
  if (decoded.width !== declared.width || decoded.height !== declared.height)
    throw new ImageRejectedError('undecodable', 'decoded size differs from the header');
  const scale = Math.min(1, limits.maxDimension / Math.max(decoded.width, decoded.height));
  const width = Math.max(1, Math.round(decoded.width * scale));
  const height = Math.max(1, Math.round(decoded.height * scale));
  const resized = downscale(decoded, width, height);
  const encoded = jpeg.encode({ data: resized.data, width, height }, 90).data;
  return {
    jpeg: new Uint8Array(encoded.buffer, encoded.byteOffset, encoded.byteLength),
    width,
    height,
    original: { format, width: decoded.width, height: decoded.height, bytes: bytes.length },
  };
}
