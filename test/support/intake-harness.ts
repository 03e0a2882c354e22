import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { configSchema, type ServiceConfig } from '../../src/config/config-schema.ts';
import { silentLogger } from '../../src/log.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { type FhirStandIn, startFhirStandIn } from './fhir-stand-in.ts';

/**
 * The service on a real port, pointed at a FHIR stand-in on another port, with test-sized timings:
 * short backoffs, leases and grace periods, polling only when asked.
 */
export const notifySecret = 'test-notify-secret-0123456789';

export interface IntakeHarness {
  standIn: FhirStandIn;
  service: RunningService;
  config: ServiceConfig;
  post(pathname: string, body: unknown, headers?: Record<string, string>, method?: string): Promise<Response>;
  metric(name: string, labels: Record<string, string>): Promise<number>;
  close(): Promise<void>;
}

type DeepPartial<T> = { [K in keyof T]?: T[K] extends object ? DeepPartial<T[K]> : T[K] };

function merge(base: Record<string, unknown>, override: Record<string, unknown>): Record<string, unknown> {
  const result = { ...base };
  for (const [key, value] of Object.entries(override)) {
    result[key] =
      value && typeof value === 'object' && !Array.isArray(value) && typeof base[key] === 'object'
        ? merge(base[key] as Record<string, unknown>, value as Record<string, unknown>)
        : value;
  }
  return result;
}

export function testConfig(
  fhirBaseUrl: string,
  dataDir: string,
  overrides: DeepPartial<ServiceConfig> = {},
): ServiceConfig {
  const base = {
    port: 0,
    dataDir,
    logLevel: 'silent',
    fhir: { baseUrl: fhirBaseUrl, timeoutMs: 2_000, maxAttempts: 3 },
    notify: { secret: notifySecret },
    queue: { backoffBaseMs: 50, backoffMaxMs: 400, leaseMs: 3_000, pollIntervalMs: 20, concurrency: 2 },
    intake: {
      sources: { polling: false },
      gapGraceMs: 200,
      heartbeat: { periodMs: 0, checkIntervalMs: 100 },
      subscription: { ensureOnStart: false },
    },
  };
  return configSchema.parse(merge(base, overrides as Record<string, unknown>));
}

export async function startIntakeHarness(
  overrides: DeepPartial<ServiceConfig> = {},
  standInOptions: Parameters<typeof startFhirStandIn>[0] = {},
  /** Puts something (a fault proxy) between the service and the FHIR stand-in. */
  inFront?: (standInUrl: string) => Promise<{ url: string; close(): Promise<void> }>,
): Promise<IntakeHarness> {
  const standIn = await startFhirStandIn(standInOptions);
  const front = inFront ? await inFront(standIn.url) : undefined;
  const dataDir = mkdtempSync(path.join(tmpdir(), 'intake-test-'));
  const config = testConfig(front?.url ?? standIn.url, dataDir, overrides);
  const service = await startService(config, silentLogger());
  return {
    standIn,
    service,
    config,
    post: (pathname, body, headers = {}, method = 'POST') =>
      fetch(`${service.url}${pathname}`, {
        method,
        headers: {
          authorization: `Bearer ${notifySecret}`,
          ...(body === undefined ? {} : { 'content-type': 'application/fhir+json' }),
          ...headers,
        },
        body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
      }),
    async metric(name, labels) {
      const text = await (
        await fetch(`${service.url}/metrics`, { headers: { authorization: `Bearer ${service.adminSecret}` } })
      ).text();
      const wanted = Object.entries(labels)
        .map(([key, value]) => `${key}="${value}"`)
        .sort();
      for (const line of text.split('\n')) {
        const match = /^([a-z_]+)(?:\{([^}]*)\})? ([0-9.e+-]+)$/.exec(line);
        if (!match || match[1] !== name) continue;
        const have = (match[2] ?? '').split(',').filter(Boolean).sort();
        if (wanted.every((label) => have.includes(label))) return Number(match[3]);
      }
      return 0;
    },
    async close() {
      await service.close();
      await front?.close();
      await standIn.close();
      rmSync(dataDir, { recursive: true, force: true });
    },
  };
}

export async function waitFor<T>(
  check: () => T | Promise<T>,
  what: string,
  timeoutMs = 20_000,
): Promise<NonNullable<T>> {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    const value = await check();
    if (value) return value as NonNullable<T>;
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((resolve) => setTimeout(resolve, 25));
  }
}

/** Drafts written for each encounter, by the encounter reference in context. */
export function draftsByEncounter(standIn: FhirStandIn): Map<string, number> {
  const counts = new Map<string, number>();
  for (const document of standIn.all('DocumentReference')) {
    const encounter = (document.context as { encounter?: { reference?: string }[] } | undefined)
      ?.encounter?.[0]?.reference;
    if (!encounter) continue;
    const id = encounter.split('/').pop() as string;
    counts.set(id, (counts.get(id) ?? 0) + 1);
  }
  return counts;
}
