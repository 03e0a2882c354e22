import type { Logger } from '../src/log.ts';
import type { DraftEngine, DraftRequest, DraftResult } from './draft-engine.ts';

/**
 * A model engine backed by the extractive engine. Failures a later attempt may fix (the inference
 * server is down, a timeout) are thrown, so the queue retries; failures that would repeat (the
 * model's output was invalid twice, the budget ran out) give the extractive draft instead, so the
 * clinician still gets a cited note. A model draft that the pipeline's verifier leaves with no
 * supported line is the pipeline's to replace: it drafts again with `fallback`. The result names the
 * engine that wrote it, so the Provenance stays honest.
 */
export function withExtractiveFallback(
  primary: DraftEngine,
  fallback: DraftEngine,
  logger: Logger,
): DraftEngine {
  return {
    id: primary.id,
    version: primary.version,
    fallback,
    async draft(request: DraftRequest): Promise<DraftResult> {
      try {
        return await primary.draft(request);
      } catch (error) {
        const failure = error as { isRetryable?: boolean; code?: string; name?: string };
        if (failure.isRetryable !== false || request.signal?.aborted) throw error;
        logger.warn(
          {
            encounterId: request.record.encounter.id,
            kind: request.kind,
            code: failure.code ?? failure.name,
          },
          'model draft failed, writing the extractive draft instead',
        );
        return fallback.draft(request);
      }
    },
  };
}
