import type { OperationOutcome, OperationOutcomeIssue } from 'fhir/r4.js';

/**
 * Every error that crosses the HTTP boundary or comes back from a FHIR server is an OperationOutcome.
 * One error class, one normaliser and one status map keep that uniform (the Medplum pattern).
 */
export type IssueCode = OperationOutcomeIssue['code'];

const statusByIssueCode: Partial<Record<IssueCode, number>> = {
  invalid: 400,
  structure: 400,
  required: 400,
  value: 400,
  invariant: 400,
  security: 401,
  login: 401,
  forbidden: 403,
  'not-found': 404,
  deleted: 410,
  'not-supported': 415,
  'too-long': 413,
  conflict: 409,
  duplicate: 409,
  throttled: 429,
  timeout: 504,
  transient: 503,
  exception: 500,
};

export class OperationOutcomeError extends Error {
  readonly outcome: OperationOutcome;
  readonly status: number;
  /** Whether repeating the same request later may succeed (429, 5xx, timeouts). */
  readonly isRetryable: boolean;
  /** Seconds the server asked us to wait, from Retry-After. */
  readonly retryAfterSeconds: number | undefined;

  constructor(
    outcome: OperationOutcome,
    options: { status?: number; cause?: unknown; retryAfterSeconds?: number } = {},
  ) {
    super(outcome.issue?.[0]?.diagnostics ?? outcome.issue?.[0]?.details?.text ?? 'FHIR operation failed', {
      cause: options.cause,
    });
    this.name = 'OperationOutcomeError';
    this.outcome = outcome;
    this.status = options.status ?? statusForOutcome(outcome);
    this.isRetryable = this.status === 429 || this.status === 408 || this.status >= 500;
    this.retryAfterSeconds = options.retryAfterSeconds;
  }
}

export function outcome(
  code: IssueCode,
  diagnostics: string,
  severity: OperationOutcomeIssue['severity'] = 'error',
  expression?: string[],
): OperationOutcome {
  return {
    resourceType: 'OperationOutcome',
    issue: [{ severity, code, diagnostics, ...(expression ? { expression } : {}) }],
  };
}

export function outcomeError(code: IssueCode, diagnostics: string, status?: number): OperationOutcomeError {
  return new OperationOutcomeError(outcome(code, diagnostics), { status });
}

export function statusForOutcome(value: OperationOutcome): number {
  const code = value.issue?.find((issue) => issue.severity === 'error' || issue.severity === 'fatal')?.code;
  return (code && statusByIssueCode[code]) || 500;
}

export function isOperationOutcome(value: unknown): value is OperationOutcome {
  return (
    typeof value === 'object' &&
    value !== null &&
    (value as { resourceType?: unknown }).resourceType === 'OperationOutcome'
  );
}

/** Turns anything thrown into an OperationOutcomeError, keeping a server's own outcome when there is one. */
export function normalizeOperationOutcome(error: unknown): OperationOutcomeError {
  if (error instanceof OperationOutcomeError) return error;
  if (isOperationOutcome(error)) return new OperationOutcomeError(error);
  const message = error instanceof Error ? error.message : String(error);
  return new OperationOutcomeError(outcome('exception', message), { status: 500, cause: error });
}
