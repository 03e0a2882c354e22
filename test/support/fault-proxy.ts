import { createServer, request as httpRequest, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A proxy in front of a FHIR server that misbehaves like a loaded one: a share of calls answered 503
 * or 429 with Retry-After, a share never answered (half of those after the server did the work, so
 * the client cannot know whether a write happened). Everything else passes through.
 */
export interface FaultProxyOptions {
  target: string;
  /** Share of calls answered 503/429 with Retry-After. */
  throttleRate: number;
  /** Share of calls that never get an answer. */
  timeoutRate: number;
  random?: () => number;
}

export interface FaultProxy {
  url: string;
  counts: { passed: number; throttled: number; timedOut: number; timedOutAfterWork: number };
  close(): Promise<void>;
}

export async function startFaultProxy(options: FaultProxyOptions): Promise<FaultProxy> {
  const target = new URL(options.target);
  const random = options.random ?? Math.random;
  const counts = { passed: 0, throttled: 0, timedOut: 0, timedOutAfterWork: 0 };
  const held = new Set<ServerResponse>();

  const forward = (
    request: IncomingMessage,
    body: Buffer,
    onResponse: (
      status: number,
      headers: Record<string, string | string[] | undefined>,
      data: Buffer,
    ) => void,
  ) => {
    const upstream = httpRequest(
      {
        hostname: target.hostname,
        port: target.port,
        method: request.method,
        path: request.url,
        headers: { ...request.headers, host: target.host },
      },
      (response) => {
        const chunks: Buffer[] = [];
        response.on('data', (chunk: Buffer) => chunks.push(chunk));
        response.on('end', () =>
          onResponse(response.statusCode ?? 502, response.headers, Buffer.concat(chunks)),
        );
      },
    );
    upstream.on('error', () => onResponse(502, {}, Buffer.from('')));
    upstream.end(body);
  };

  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk: Buffer) => chunks.push(chunk));
    request.on('end', () => {
      const body = Buffer.concat(chunks);
      const roll = random();
      if (roll < options.throttleRate) {
        counts.throttled++;
        const status = random() < 0.5 ? 503 : 429;
        response.writeHead(status, {
          'content-type': 'application/fhir+json',
          'retry-after': random() < 0.9 ? '0' : '1',
        });
        response.end(
          JSON.stringify({
            resourceType: 'OperationOutcome',
            issue: [
              { severity: 'error', code: status === 429 ? 'throttled' : 'transient', diagnostics: 'busy' },
            ],
          }),
        );
        return;
      }
      if (roll < options.throttleRate + options.timeoutRate) {
        counts.timedOut++;
        held.add(response);
        response.on('close', () => held.delete(response));
        if (random() < 0.5) {
          counts.timedOutAfterWork++;
          forward(request, body, () => undefined);
        }
        return;
      }
      counts.passed++;
      forward(request, body, (status, headers, data) => {
        response.writeHead(status, headers);
        response.end(data);
      });
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}${target.pathname}`;
  return {
    url,
    counts,
    close: () =>
      new Promise<void>((resolve) => {
        for (const response of held) response.destroy();
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}
