import { type ChatCompletionsConnection, postChatCompletion } from './chat-completions.ts';
import { stripThinking } from './gemma-turns.ts';
import { ModelError } from './provider.ts';

/**
 * A model that looks at one image and answers in words: MedGemma 4B multimodal as vLLM serves
 * `google/medgemma-4b-it`, through the OpenAI-compatible chat endpoint with an image content part
 * (a `data:image/jpeg;base64,...` URL, so the server never fetches anything itself). Gemma has no
 * system role: the instructions and the image go in one user turn. Providers know models, not FHIR.
 */
export interface VisionRequest {
  /** What to say about the image. */
  instruction: string;
  /** The (already downscaled) image. */
  jpeg: Uint8Array;
  maxTokens: number;
  signal?: AbortSignal;
}

export interface VisionProvider {
  readonly provider: string;
  readonly modelId: string;
  describe(request: VisionRequest): Promise<{ text: string; finishReason: 'stop' | 'length' | 'other' }>;
}

export class OpenAiCompatibleVisionProvider implements VisionProvider {
  readonly provider = 'remote';
  readonly modelId: string;
  readonly #connection: ChatCompletionsConnection;

  constructor(connection: ChatCompletionsConnection) {
    this.#connection = connection;
    this.modelId = connection.model;
  }

  async describe(request: VisionRequest) {
    const output = await postChatCompletion(
      this.#connection,
      {
        messages: [
          {
            role: 'user',
            content: [
              { type: 'text', text: request.instruction },
              {
                type: 'image_url',
                image_url: { url: `data:image/jpeg;base64,${Buffer.from(request.jpeg).toString('base64')}` },
              },
            ],
          },
        ],
        max_tokens: request.maxTokens,
        temperature: 0,
      },
      request.signal,
    );
    const choice = output.choices[0];
    if (typeof choice.message.content !== 'string') {
      throw new ModelError('The vision model returned no text', { code: 'bad-response', isRetryable: false });
    }
    const reason = choice.finish_reason;
    return {
      text: stripThinking(choice.message.content),
      finishReason:
        reason === 'stop' || reason === 'eos_token'
          ? ('stop' as const)
          : reason === 'length'
            ? ('length' as const)
            : ('other' as const),
    };
  }
}
