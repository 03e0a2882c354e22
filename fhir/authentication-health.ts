import type { AccessTokenSource, AuthenticationObservation } from './fhir-client.ts';
import { FhirRequestError, type OperationOutcomeError } from './operation-outcome.ts';
import { TokenEndpointError } from './smart-backend-auth.ts';

/**
 * Whether the FHIR server still accepts the service's own token, for readiness. An expired static token used to
 * leave `/readyz` ready while every job was refused; now repeated 401s (or one 401 to a token fetched just after
 * the previous one was refused, or a token endpoint that refuses the client) make the service not ready, with the
 * reason, until a request is accepted again.
 */
export interface AuthenticationHealthOptions {
  /** Named in the reason: the FHIR base URL. */
  endpoint: string;
  /** 401s in a row, across requests, before the service says authentication is failing. */
  threshold?: number;
  /** Told when the verdict changes: the reason when authentication starts failing, undefined when it recovers. */
  onChange?: (problem: string | undefined) => void;
}

export const defaultAuthenticationFailureThreshold = 3;

export class FhirAuthenticationHealth {
  readonly #endpoint: string;
  readonly #threshold: number;
  readonly #onChange: AuthenticationHealthOptions['onChange'];
  #refusedInARow = 0;
  #problem: string | undefined;

  constructor(options: AuthenticationHealthOptions) {
    this.#endpoint = options.endpoint;
    this.#threshold = Math.max(1, options.threshold ?? defaultAuthenticationFailureThreshold);
    this.#onChange = options.onChange;
  }

  /** The reason the service's authentication is failing, or undefined while its token works. */
  get problem(): string | undefined {
    return this.#problem;
  }

  /** Pass as FhirClientOptions.onAuthentication. */
  readonly observe = (observation: AuthenticationObservation): void => {
    if (observation.accepted) {
      this.#refusedInARow = 0;
      this.#set(undefined);
      return;
    }
    this.#refusedInARow++;
    // A fresh token refused too means waiting for more 401s would only hide the problem for longer.
    if (observation.afterRefresh || this.#refusedInARow >= this.#threshold)
      this.#set(`fhir-authentication-failing: ${this.#endpoint}, last status ${observation.status}`);
  };

  /** The token source, reporting a token endpoint that refuses the client as failing authentication. */
  watch(source: AccessTokenSource): AccessTokenSource {
    return {
      canRefresh: source.canRefresh,
      invalidate: (rejectedToken) => source.invalidate(rejectedToken),
      getToken: async () => {
        try {
          return await source.getToken();
        } catch (error) {
          if (error instanceof TokenEndpointError && error.kind === 'refused') {
            this.#refusedInARow++;
            this.#set(
              `fhir-authentication-failing: ${error.endpoint}, last status ${error.httpStatus ?? error.status}${error.oauthError ? ` ${error.oauthError}` : ''}`,
            );
          }
          throw error;
        }
      },
    };
  }

  #set(problem: string | undefined): void {
    if (problem === this.#problem) return;
    this.#problem = problem;
    this.#onChange?.(problem);
  }
}

/**
 * A failure of the service's credentials rather than of the work: a 401 from the FHIR server, or a token endpoint
 * refusing the client. Somebody has to renew the token or fix the registration, and the job can then succeed, so
 * it is retried with backoff rather than dead-lettered at once. A 403 is not one of these: the token was accepted
 * and lacks a scope, which no retry changes; the operator retries those jobs (/api/jobs/:id/retry) after the fix.
 */
export function isAuthenticationFailure(error: OperationOutcomeError): boolean {
  if (error instanceof FhirRequestError) return error.status === 401;
  return error instanceof TokenEndpointError && error.kind === 'refused';
}
