import type { OperationOutcome, OperationOutcomeIssue } from 'fhir/r4.js';
import type { ScopeContext } from './smart-scopes.ts';

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

/**
 * A FHIR request as named in its failure: the interaction, the resource type, and for a batch or
 * transaction its entries, so an operator reading a job's error can tell which request broke and
 * which permission it needed, without the resource itself (which holds patient data).
 */
export interface FhirRequestName {
  /** read, vread, search, create, update, delete, capabilities, batch, transaction. */
  interaction: string;
  resourceType?: string;
  /** The resource sent declares meta.profile (Medplum then checks StructureDefinition access). */
  declaresProfile?: boolean;
  /** The entries of a batch or transaction, in order. */
  entries?: FhirRequestName[];
}

/** Diagnostics can echo what was sent (patient data), so only their start is kept in errors and logs. */
export const maxDiagnosticsCharacters = 300;

const permissionByInteraction: Record<string, string> = {
  create: 'c',
  read: 'r',
  vread: 'r',
  update: 'u',
  patch: 'u',
  delete: 'd',
  search: 's',
};

/** The server's diagnostics on one line and capped; undefined when the outcome says nothing. */
export function outcomeDiagnostics(value: OperationOutcome | undefined): string | undefined {
  const texts = (value?.issue ?? [])
    .filter((issue) => issue.severity === 'error' || issue.severity === 'fatal' || !issue.severity)
    .map((issue) => issue.diagnostics ?? issue.details?.text ?? issue.details?.coding?.[0]?.display)
    .filter((text): text is string => typeof text === 'string' && text.trim() !== '');
  if (texts.length === 0) return undefined;
  // Control characters (a newline in diagnostics) could forge lines in a plain-text log.
  const text = texts
    .join('; ')
    .replace(/\p{Cc}+/gu, ' ')
    .trim();
  return text.length > maxDiagnosticsCharacters ? `${text.slice(0, maxDiagnosticsCharacters)}...` : text;
}

function nameOf(request: FhirRequestName): string {
  return request.resourceType ? `${request.interaction} ${request.resourceType}` : request.interaction;
}

/** The entry a server's outcome points at (`Bundle.entry[2]...` in expression or location), if any. */
function entryNamedBy(value: OperationOutcome | undefined, entries: FhirRequestName[]): number | undefined {
  for (const issue of value?.issue ?? []) {
    for (const path of [...(issue.expression ?? []), ...(issue.location ?? [])]) {
      const match = /^Bundle\.entry\[(\d+)\]/.exec(path);
      if (match && Number(match[1]) < entries.length) return Number(match[1]);
    }
  }
  return undefined;
}

/**
 * The scope a 403 most likely means is missing. Medplum honours only the first scope it is given per
 * type, hence the advice to ask for every permission at once (`.crus`); a resource declaring
 * meta.profile also makes Medplum read StructureDefinition.
 */
export function likelyMissingScopes(requests: FhirRequestName[], context: ScopeContext = 'system'): string {
  const scopes = [
    ...new Set(
      requests
        .filter((request) => request.resourceType && permissionByInteraction[request.interaction])
        .map(
          (request) => `${context}/${request.resourceType}.${permissionByInteraction[request.interaction]}`,
        ),
    ),
  ];
  const profiled = requests.some((request) => request.declaresProfile);
  const parts: string[] = [];
  if (scopes.length === 1) parts.push(`the token probably lacks ${scopes[0]} (or .crus)`);
  else if (scopes.length > 1)
    parts.push(`the token probably lacks one of ${scopes.join(', ')} (ask for .crus per type)`);
  if (profiled)
    parts.push(
      // StructureDefinition is in no patient's compartment: a clinician's launch needs it as a user/ scope.
      `a resource declaring meta.profile also needs ${context === 'patient' ? 'user' : context}/StructureDefinition.rs on Medplum (or set fhir.declareProfiles: false)`,
    );
  return parts.join('; ');
}

/**
 * One line naming a failed FHIR request: status, interaction, resource type, the server's (capped)
 * diagnostics, and for a 403 the scope that is probably missing. For example
 * `403 on create DocumentReference: Forbidden; the token probably lacks system/DocumentReference.c (or .crus)`.
 */
export function describeFhirFailure(
  request: FhirRequestName,
  status: number,
  serverOutcome: OperationOutcome | undefined,
  context: ScopeContext = 'system',
): string {
  const entries = request.entries ?? [];
  const entryIndex = entryNamedBy(serverOutcome, entries);
  const named =
    entryIndex !== undefined
      ? `${nameOf(request)} (entry ${entryIndex + 1}: ${nameOf(entries[entryIndex])})`
      : entries.length > 0
        ? `${nameOf(request)} (${entries.map(nameOf).join(', ')})`
        : nameOf(request);
  let text = `${status} on ${named}: ${outcomeDiagnostics(serverOutcome) ?? `HTTP ${status}`}`;
  if (status === 403) {
    const refused =
      entryIndex !== undefined ? [entries[entryIndex]] : entries.length > 0 ? entries : [request];
    const hint = likelyMissingScopes(refused, context);
    if (hint) text += `; ${hint}`;
  }
  if (request.interaction === 'transaction' && [404, 405, 501].includes(status))
    text += '; the server may not accept transactions (set fhir.transactions: false)';
  return text;
}

/**
 * A FHIR server refused a request (or never answered it). The message names the request as
 * describeFhirFailure does; the server's own outcome is kept whole for callers that answer with it.
 */
export class FhirRequestError extends OperationOutcomeError {
  readonly request: FhirRequestName;

  constructor(
    request: FhirRequestName,
    serverOutcome: OperationOutcome,
    options: {
      status: number;
      cause?: unknown;
      retryAfterSeconds?: number;
      scopeContext?: ScopeContext;
      /** Said instead of the server's diagnostics (timeouts, refused connections: no server outcome). */
      description?: string;
    },
  ) {
    super(serverOutcome, options);
    this.name = 'FhirRequestError';
    this.request = request;
    this.message = describeFhirFailure(
      request,
      options.status,
      options.description ? outcome('exception', options.description) : serverOutcome,
      options.scopeContext,
    );
  }
}
