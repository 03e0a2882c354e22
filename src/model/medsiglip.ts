import {
  featureExtraction,
  InferenceClientProviderApiError,
  zeroShotImageClassification,
} from '@huggingface/inference';
import { ModelError } from './provider.ts';

/**
 * MedSigLIP (Google's 400M medical image encoder) on the site's endpoint, through
 * @huggingface/inference: zero-shot classification against candidate labels (the Hugging Face
 * `zero-shot-image-classification` task: `{ inputs: { image: <base64> }, parameters: { candidate_labels } }`
 * in, `[{ label, score }]` out), and an image embedding (the `feature-extraction` task with the base64
 * JPEG as `inputs`, a vector out: the site's handler for MedSigLIP's image tower). Every answer is checked:
 * labels must be the ones asked, scores finite in [0, 1], the vector finite, non-zero and of one length.
 */
export interface ImageEncoderOptions {
  classificationEndpointUrl?: string;
  embeddingEndpointUrl?: string;
  accessToken?: string;
  timeoutMs: number;
}

export interface LabelScore {
  label: string;
  score: number;
}

function toModelError(error: unknown, timedOut: boolean): ModelError {
  if (error instanceof ModelError) return error;
  if (timedOut)
    return new ModelError('MedSigLIP timed out', { code: 'timeout', isRetryable: true, cause: error });
  if (error instanceof InferenceClientProviderApiError) {
    const status = error.httpResponse.status;
    return new ModelError(`MedSigLIP answered ${status}`, {
      code: 'http-error',
      status,
      isRetryable: status === 429 || status >= 500,
      cause: error,
    });
  }
  return new ModelError('MedSigLIP could not be reached or answered garbage', {
    code: 'bad-response',
    isRetryable: true,
    cause: error,
  });
}

export class MedSigLip {
  readonly #options: ImageEncoderOptions;

  constructor(options: ImageEncoderOptions) {
    this.#options = options;
  }

  get classifies(): boolean {
    return Boolean(this.#options.classificationEndpointUrl);
  }

  get embeds(): boolean {
    return Boolean(this.#options.embeddingEndpointUrl);
  }

  async #call<T>(work: (signal: AbortSignal) => Promise<T>, signal?: AbortSignal): Promise<T> {
    const timeout = AbortSignal.timeout(this.#options.timeoutMs);
    try {
      return await work(signal ? AbortSignal.any([signal, timeout]) : timeout);
    } catch (error) {
      throw toModelError(error, timeout.aborted);
    }
  }

  /** Scores for exactly the labels asked, in their order. */
  async classify(jpeg: Uint8Array, labels: readonly string[], signal?: AbortSignal): Promise<LabelScore[]> {
    const endpointUrl = this.#options.classificationEndpointUrl;
    if (!endpointUrl)
      throw new ModelError('No MedSigLIP endpoint is configured', {
        code: 'not-configured',
        isRetryable: false,
      });
    const answer = await this.#call(
      (combined) =>
        zeroShotImageClassification(
          {
            endpointUrl,
            ...(this.#options.accessToken ? { accessToken: this.#options.accessToken } : {}),
            inputs: new Blob([new Uint8Array(jpeg)], { type: 'image/jpeg' }),
            parameters: { candidate_labels: [...labels] },
          },
          { signal: combined, retry_on_error: false },
        ),
      signal,
    );
    const asked = new Set(labels);
    const scores = new Map<string, number>();
    for (const entry of answer) {
      if (
        !asked.has(entry.label) ||
        scores.has(entry.label) ||
        !Number.isFinite(entry.score) ||
        entry.score < 0 ||
        entry.score > 1
      )
        throw new ModelError('MedSigLIP answered labels or scores that were not asked for', {
          code: 'bad-response',
          isRetryable: false,
        });
      scores.set(entry.label, entry.score);
    }
    if (scores.size !== asked.size)
      throw new ModelError('MedSigLIP left labels unscored', { code: 'bad-response', isRetryable: false });
    return labels.map((label) => ({ label, score: scores.get(label) as number }));
  }

  /** The image's embedding, as a unit vector. */
  async embed(jpeg: Uint8Array, signal?: AbortSignal): Promise<number[]> {
    const endpointUrl = this.#options.embeddingEndpointUrl;
    if (!endpointUrl)
      throw new ModelError('No MedSigLIP embedding endpoint is configured', {
        code: 'not-configured',
        isRetryable: false,
      });
    const answer = await this.#call(
      (combined) =>
        featureExtraction(
          {
            endpointUrl,
            ...(this.#options.accessToken ? { accessToken: this.#options.accessToken } : {}),
            inputs: Buffer.from(jpeg).toString('base64'),
          },
          { signal: combined, retry_on_error: false },
        ),
      signal,
    );
    // One image: a vector, or a batch of one.
    const vector =
      Array.isArray(answer[0]) && answer.length === 1 ? (answer[0] as unknown[]) : (answer as unknown[]);
    if (vector.length < 8 || !vector.every((value) => typeof value === 'number' && Number.isFinite(value)))
      throw new ModelError('MedSigLIP answered no usable embedding', {
        code: 'bad-response',
        isRetryable: false,
      });
    const numbers = vector as number[];
    const norm = Math.sqrt(numbers.reduce((sum, value) => sum + value * value, 0));
    if (norm === 0)
      throw new ModelError('MedSigLIP answered a zero embedding', {
        code: 'bad-response',
        isRetryable: false,
      });
    return numbers.map((value) => value / norm);
  }
}

/** Cosine similarity of two unit vectors (undefined when their lengths differ). */
export function cosineSimilarity(first: readonly number[], second: readonly number[]): number | undefined {
  if (first.length !== second.length) return undefined;
  return first.reduce((sum, value, index) => sum + value * second[index], 0);
}
