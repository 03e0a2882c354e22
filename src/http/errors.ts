import type { ErrorRequestHandler, Request, RequestHandler } from 'express';
import {
  type IssueCode,
  normalizeOperationOutcome,
  OperationOutcomeError,
  outcome,
} from '../../fhir/operation-outcome.ts';
import type { Logger } from '../log.ts';

/**
 * The one error handler: every error leaves as a FHIR OperationOutcome. Client errors say what was
 * wrong; server errors are logged and their details hidden from the caller.
 */

/** The failure types of express's body parsers (body-parser, raw-body), each with its own answer. */
const bodyFailures: Record<string, { code: IssueCode; diagnostics: string }> = {
  'entity.too.large': { code: 'too-long', diagnostics: 'request body is larger than the limit' },
  'entity.parse.failed': { code: 'structure', diagnostics: 'request body is not valid JSON' },
  'encoding.unsupported': {
    code: 'not-supported',
    diagnostics: 'Content-Encoding not supported (use identity, gzip, deflate or br)',
  },
  'charset.unsupported': { code: 'not-supported', diagnostics: 'request body charset not supported' },
  'request.aborted': { code: 'incomplete', diagnostics: 'the client went away before the body was read' },
  'request.size.invalid': {
    code: 'structure',
    diagnostics: 'request body length does not match its Content-Length',
  },
  'entity.verify.failed': { code: 'forbidden', diagnostics: 'request body was refused' },
};

export interface BodyReadFailure {
  error: OperationOutcomeError;
  /** The client disconnected: nobody is left to answer, and nothing went wrong on our side. */
  clientGone: boolean;
}

/**
 * A body parser's failure as the client error it is, with the parser's own status; undefined for
 * anything else. The parsers' messages are not passed on: some quote the body.
 */
export function bodyReadFailure(caught: unknown): BodyReadFailure | undefined {
  if (typeof caught !== 'object' || caught === null) return undefined;
  const { type, status, code } = caught as { type?: unknown; status?: unknown; code?: unknown };
  const clientStatus = typeof status === 'number' && status >= 400 && status < 500 ? status : undefined;
  if (typeof type === 'string' && (bodyFailures[type] || clientStatus)) {
    const known = bodyFailures[type] ?? { code: 'invalid', diagnostics: 'request body could not be read' };
    return {
      error: new OperationOutcomeError(outcome(known.code, known.diagnostics), {
        status: clientStatus ?? 400,
        cause: caught,
      }),
      clientGone: type === 'request.aborted',
    };
  }
  // zlib's errors (Z_DATA_ERROR, Z_BUF_ERROR...) reach us with the 400 the parser gave them and no type.
  if (typeof code === 'string' && code.startsWith('Z_') && clientStatus) {
    return {
      error: new OperationOutcomeError(
        outcome('structure', 'request body does not decompress as its Content-Encoding says'),
        { status: clientStatus, cause: caught },
      ),
      clientGone: false,
    };
  }
  return undefined;
}

/** An attacker chooses the path: a log line carries only its start. */
export function pathForLog(request: Request): string {
  const path = request.path;
  return path.length > 120 ? `${path.slice(0, 120)}…` : path;
}

export function operationOutcomeErrorHandler(logger: Logger): ErrorRequestHandler {
  return (caught, request, response, _next) => {
    const bodyFailure = bodyReadFailure(caught);
    if (bodyFailure?.clientGone) {
      logger.debug({ method: request.method, path: pathForLog(request) }, 'request-aborted-by-client');
      if (!response.headersSent && !response.destroyed)
        response
          .status(bodyFailure.error.status)
          .type('application/fhir+json')
          .json(bodyFailure.error.outcome);
      return;
    }
    const error = bodyFailure?.error ?? normalizeOperationOutcome(caught);
    if (error.status >= 500) {
      logger.error(
        { method: request.method, path: pathForLog(request), status: error.status, error: error.message },
        'request-failed',
      );
      response
        .status(error.status)
        .type('application/fhir+json')
        .json(
          error.status === 500 ? outcome('exception', 'internal error; see the service log') : error.outcome,
        );
      return;
    }
    if (error.retryAfterSeconds !== undefined && !response.headersSent)
      response.set('Retry-After', String(error.retryAfterSeconds));
    response.status(error.status).type('application/fhir+json').json(error.outcome);
  };
}

export const notFoundHandler: RequestHandler = (request, response) => {
  response
    .status(404)
    .type('application/fhir+json')
    .json(outcome('not-found', `no route for ${request.method} ${pathForLog(request)}`));
};
