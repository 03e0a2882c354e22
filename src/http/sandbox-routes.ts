import express, { type ErrorRequestHandler, type Router } from 'express';
import { normalizeOperationOutcome, OperationOutcomeError, outcome } from '../../fhir/operation-outcome.ts';
import type { SandboxEhr } from '../sandbox/sandbox-ehr.ts';

/**
 * Mounts the sandbox EHR's framework-free `handle` on express: FHIR JSON in and out
 * (application/fhir+json or application/json; JSON Patch for PATCH), a body size limit, and
 * OperationOutcomes for every error. The lead mounts it at `/sandbox/fhir`.
 */
export interface SandboxRouterOptions {
  /** Largest accepted request body (transactions of a whole patient fit; default 20 MB). */
  maxBodyBytes?: number;
}

const acceptedTypes = ['application/fhir+json', 'application/json', 'application/json-patch+json'];

export function sandboxRouter(sandbox: SandboxEhr, options: SandboxRouterOptions = {}): Router {
  const router = express.Router();
  router.use(
    express.json({ type: acceptedTypes, limit: options.maxBodyBytes ?? 20 * 1024 * 1024, strict: true }),
  );
  router.use(async (request, response) => {
    const hasBody =
      ['POST', 'PUT', 'PATCH'].includes(request.method) && request.headers['content-length'] !== '0';
    if (hasBody && request.headers['content-type'] && !request.is(acceptedTypes)) {
      throw new OperationOutcomeError(outcome('not-supported', 'send FHIR JSON (application/fhir+json)'), {
        status: 415,
      });
    }
    const baseUrl = `${request.protocol}://${request.get('host')}${request.baseUrl}`;
    // Notifications need an absolute base even before the composition root knows its public URL.
    if (!sandbox.baseUrl) sandbox.setBaseUrl(baseUrl);
    const head = request.method === 'HEAD';
    const result = await sandbox.handle({
      method: head ? 'GET' : request.method,
      url: request.url,
      headers: request.headers,
      body: request.body,
      baseUrl,
      // The peer as express reports it (the forwarded client only behind a trusted proxy, http.trustProxy);
      // an unknown peer is not loopback, so it gets no administrator's pass.
      remoteAddress: request.ip ?? request.socket.remoteAddress ?? 'unknown',
    });
    response.status(result.status);
    for (const [name, value] of Object.entries(result.headers)) response.setHeader(name, value);
    if (head) response.end();
    else if (result.body instanceof Uint8Array) response.end(Buffer.from(result.body));
    else if (result.body) response.end(JSON.stringify(result.body));
    else response.end();
  });
  const errors: ErrorRequestHandler = (caught, _request, response, _next) => {
    const bodyError = caught as { type?: string };
    const error =
      bodyError.type === 'entity.too.large'
        ? new OperationOutcomeError(outcome('too-long', 'request body is larger than the limit'), {
            status: 413,
          })
        : bodyError.type === 'entity.parse.failed'
          ? new OperationOutcomeError(outcome('structure', 'request body is not valid JSON'), { status: 400 })
          : normalizeOperationOutcome(caught);
    const body =
      error.status >= 500 ? outcome('exception', 'internal error in the sandbox EHR') : error.outcome;
    response.status(error.status).type('application/fhir+json').send(JSON.stringify(body));
  };
  router.use(errors);
  return router;
}
