/**
 * Failures of a model run that a retry of the same job would repeat (`isRetryable: false`): the
 * engine's fallback writes the extractive draft instead.
 */
export class InvalidModelOutputError extends Error {
  readonly isRetryable = false;
  readonly code = 'invalid-model-output';

  constructor(message: string) {
    super(message);
    this.name = 'InvalidModelOutputError';
  }
}

/** A call whose prompt plus output would not fit the model's context: refused before anything is sent. */
export class ContextBudgetError extends Error {
  readonly isRetryable = false;
  readonly code = 'context-overflow';

  constructor(message: string) {
    super(message);
    this.name = 'ContextBudgetError';
  }
}
