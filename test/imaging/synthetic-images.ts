import { encode as encodePng } from 'fast-png';
import jpeg from 'jpeg-js';
import type { ChatCompletionRequestBody } from '../support/openai-compatible-server.ts';

/**
 * Synthetic images the imaging suites make themselves: a left half white and right half black picture
 * (so a downscale that kept its content can be checked), as JPEG or PNG, of any size.
 */
function halves(width: number, height: number, channels: 3 | 4): Uint8Array {
  const data = new Uint8Array(width * height * channels);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      const value = x < width / 2 ? 255 : 0;
      const index = (y * width + x) * channels;
      data.fill(value, index, index + 3);
      if (channels === 4) data[index + 3] = 255;
    }
  }
  return data;
}

export function halvesJpeg(width: number, height: number): Buffer {
  return jpeg.encode({ data: halves(width, height, 4), width, height }, 85).data;
}

export function halvesPng(width: number, height: number): Buffer {
  return Buffer.from(encodePng({ data: halves(width, height, 3), width, height, channels: 3, depth: 8 }));
}

/** A JPEG whose pixels are one grey level (an "earlier" image of another look). */
export function flatJpeg(width: number, height: number, grey: number): Buffer {
  const data = new Uint8Array(width * height * 4).fill(grey);
  return jpeg.encode({ data, width, height }, 85).data;
}

export interface ImageSent {
  width: number;
  height: number;
  /** Mean brightness of the left and right quarters (0-255). */
  leftMean: number;
  rightMean: number;
  bytes: number;
  prompt: string;
}

/** What a vision request carried: the prompt text and the decoded image of its image_url part. */
export function imageInRequest(body: ChatCompletionRequestBody): ImageSent {
  const content = body.messages[0].content as unknown as (
    | { type: 'text'; text: string }
    | { type: 'image_url'; image_url: { url: string } }
  )[];
  if (!Array.isArray(content)) throw new Error('the vision request has no content parts');
  const text = content.find((part) => part.type === 'text') as { text: string } | undefined;
  const image = content.find((part) => part.type === 'image_url') as
    | { image_url: { url: string } }
    | undefined;
  const match = /^data:image\/jpeg;base64,(.+)$/.exec(image?.image_url.url ?? '');
  if (!match || !text) throw new Error('the vision request has no JPEG data URL or no text');
  const bytes = Buffer.from(match[1], 'base64');
  const decoded = jpeg.decode(bytes, { useTArray: true, formatAsRGBA: true });
  const mean = (fromX: number, toX: number) => {
    let sum = 0;
    let count = 0;
    for (let y = 0; y < decoded.height; y++)
      for (let x = fromX; x < toX; x++) {
        sum += decoded.data[(y * decoded.width + x) * 4];
        count++;
      }
    return sum / count;
  };
  const quarter = Math.floor(decoded.width / 4);
  return {
    width: decoded.width,
    height: decoded.height,
    leftMean: mean(0, quarter),
    rightMean: mean(decoded.width - quarter, decoded.width),
    bytes: bytes.length,
    prompt: text.text,
  };
}
