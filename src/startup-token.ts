import { normalizeOperationOutcome } from '../fhir/operation-outcome.ts';
import { TokenEndpointError } from '../fhir/smart-backend-auth.ts';
import type { Logger } from './log.ts';
import { StartupError } from './startup-error.ts';

/**
 * The first token, asked for at start-up (after the HTTP server with the JWKS listens), so that a wrong client
 * id, an unregistered key or a narrower grant stops the service at once with a line naming the cause, instead of
 * a service that runs and drafts nothing.
 *
 * Only an unavailable token endpoint (no answer, 5xx, 429) is waited for, with backoff and without limit: the
 * outage is the authorization server's and ends without anyone touching the service, whereas exiting would have
 * an orchestrator restart it in a loop (or, without one, leave it dead) and take `/readyz`, which says what it
 * waits for, away with it. Meanwhile the service is not ready.
 */
export interface FirstTokenOptions {
  logger: Logger;
  /** Why start-up is waiting (for `/readyz`); undefined once a token came. */
  onWaiting?: (reason: string | undefined) => void;
  initialDelayMs?: number;
  maxDelayMs?: number;
  sleep?: (milliseconds: number) => Promise<void>;
  random?: () => number;
}

export function startupMessageFor(error: unknown): string {
  if (error instanceof TokenEndpointError) return `start-up stopped: ${error.message}`;
  return `start-up stopped: the service could not get a token: ${normalizeOperationOutcome(error).message}`;
}

export async function obtainFirstToken(
  provider: { getToken(): Promise<unknown> },
  options: FirstTokenOptions,
): Promise<void> {
  const initialDelayMs = options.initialDelayMs ?? 1_000;
  const maxDelayMs = options.maxDelayMs ?? 60_000;
  const sleep =
    options.sleep ??
    ((milliseconds: number) => new Promise<void>((resolve) => setTimeout(resolve, milliseconds)));
  const random = options.random ?? Math.random;
  for (let attempt = 1; ; attempt++) {
    try {
      await provider.getToken();
      options.onWaiting?.(undefined);
      if (attempt > 1) options.logger.info({ attempt }, 'token-endpoint-available');
      return;
    } catch (error) {
      if (!(error instanceof TokenEndpointError) || error.kind !== 'unavailable')
        throw new StartupError(startupMessageFor(error), { cause: error });
      const ceiling = Math.min(maxDelayMs, initialDelayMs * 2 ** (attempt - 1));
      const delayMs = Math.round(ceiling / 2 + (random() * ceiling) / 2);
      options.onWaiting?.(
        `token-endpoint-unavailable: ${error.message}; attempt ${attempt}, next in ${delayMs} ms`,
      );
      options.logger.warn(
        { attempt, retryInMs: delayMs, error: error.message },
        'token-endpoint-unavailable-at-start',
      );
      await sleep(delayMs);
    }
  }
}
