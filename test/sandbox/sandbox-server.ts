// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from HTTP responses.
import type { AddressInfo } from 'node:net';
import express from 'express';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import { createSandboxEhr, type SandboxEhr, type SandboxEhrOptions } from '../../src/sandbox/sandbox-ehr.ts';

/** A real HTTP server on an ephemeral port with the sandbox mounted where the service mounts it. */
export interface RunningSandbox {
  sandbox: SandboxEhr;
  baseUrl: string;
  close(): Promise<void>;
}

export async function startSandboxServer(
  options: SandboxEhrOptions = {},
  routerOptions: { maxBodyBytes?: number } = {},
): Promise<RunningSandbox> {
  const sandbox = createSandboxEhr(options);
  const app = express();
  app.use('/sandbox/fhir', sandboxRouter(sandbox, routerOptions));
  const server = await new Promise<ReturnType<typeof app.listen>>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const { port } = server.address() as AddressInfo;
  return {
    sandbox,
    baseUrl: `http://127.0.0.1:${port}/sandbox/fhir`,
    async close() {
      await sandbox.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

export async function fhirFetch(
  url: string,
  init: { method?: string; body?: unknown; headers?: Record<string, string> } = {},
): Promise<{ status: number; headers: Headers; json: any; text: string }> {
  const response = await fetch(url, {
    method: init.method ?? 'GET',
    headers: {
      accept: 'application/fhir+json',
      ...(init.body !== undefined ? { 'content-type': 'application/fhir+json' } : {}),
      ...init.headers,
    },
    body:
      init.body === undefined
        ? undefined
        : typeof init.body === 'string'
          ? init.body
          : JSON.stringify(init.body),
  });
  const text = await response.text();
  let json: any;
  try {
    json = text ? JSON.parse(text) : undefined;
  } catch {
    json = undefined;
  }
  return { status: response.status, headers: response.headers, json, text };
}
