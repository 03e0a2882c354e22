import type { ErrorRequestHandler, RequestHandler } from 'express';
import { normalizeOperationOutcome, OperationOutcomeError, outcome } from '../../fhir/operation-outcome.ts';
import type { Logger } from '../log.ts';

/**
 * The one error handler: every error leaves as a FHIR OperationOutcome. Client errors say what was
 * wrong; server errors are logged and their details hidden from the caller.
 */
export function operationOutcomeErrorHandler(logger: Logger): ErrorRequestHandler {
  return (caught, request, response, _next) => {
    let error: OperationOutcomeError;
    const bodyError = caught as { type?: string; status?: number; message?: string };
    if (bodyError.type === 'entity.too.large') {
      error = new OperationOutcomeError(outcome('too-long', 'request body is larger than the limit'), {
        status: 413,
      });
    } else if (bodyError.type === 'entity.parse.failed' || bodyError.type === 'encoding.unsupported') {
      error = new OperationOutcomeError(outcome('structure', 'request body is not valid JSON'), {
        status: 400,
      });
    } else {
      error = normalizeOperationOutcome(caught);
    }
    if (error.status >= 500) {
      logger.error(
        { method: request.method, path: request.path, status: error.status, error: error.message },
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
    response.status(error.status).type('application/fhir+json').json(error.outcome);
  };
}

export const notFoundHandler: RequestHandler = (request, response) => {
  response
    .status(404)
    .type('application/fhir+json')
    .json(outcome('not-found', `no route for ${request.method} ${request.path}`));
};
