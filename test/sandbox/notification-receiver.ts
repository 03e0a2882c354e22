// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP requests.
import { createServer, type IncomingHttpHeaders } from 'node:http';
import type { AddressInfo } from 'node:net';

/** One request as a notification endpoint saw it, whatever it answered. */
export interface ReceivedRequest {
  method: string;
  path: string;
  headers: IncomingHttpHeaders;
  text: string;
  body: any;
  /** The Backport notification type (handshake, heartbeat, event-notification), when the body has one. */
  type: string | undefined;
  answeredWith: number;
}

export interface NotificationReceiver {
  url: string;
  /** Every request, in arrival order, including those answered with an error. */
  requests: ReceivedRequest[];
  /** Requests to one path that were answered with a 2xx. */
  accepted(path: string): ReceivedRequest[];
  close(): Promise<void>;
}

/**
 * A loopback HTTP server standing in for a notification endpoint: records every request and answers
 * with what `answer` says (200 by default), possibly later, which lets a test hold a handshake open.
 */
export async function startNotificationReceiver(
  answer: (request: Omit<ReceivedRequest, 'answeredWith'>) => number | Promise<number> = () => 200,
): Promise<NotificationReceiver> {
  const requests: ReceivedRequest[] = [];
  const server = createServer((request, response) => {
    const chunks: Buffer[] = [];
    request.on('data', (chunk) => chunks.push(chunk));
    request.on('end', async () => {
      const text = Buffer.concat(chunks).toString();
      let body: any;
      try {
        body = text ? JSON.parse(text) : undefined;
      } catch {
        body = undefined;
      }
      const type = body?.entry?.[0]?.resource?.parameter?.find(
        (item: any) => item.name === 'type',
      )?.valueCode;
      const seen = {
        method: request.method ?? '',
        path: request.url ?? '',
        headers: request.headers,
        text,
        body,
        type,
      };
      const status = await answer(seen);
      requests.push({ ...seen, answeredWith: status });
      response.writeHead(status).end();
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    accepted: (path) =>
      requests.filter((item) => item.path === path && item.answeredWith >= 200 && item.answeredWith < 300),
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A Backport status parameter of a notification or `$status` entry. */
export function statusParameter(notification: any, name: string): any {
  return notification.entry[0].resource.parameter.find((candidate: any) => candidate.name === name);
}
