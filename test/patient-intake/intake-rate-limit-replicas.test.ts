import { mkdtempSync, rmSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { patientIntakeConfigSchema } from '../../src/config/patient-intake-config.ts';
import { patientIntakeRouter } from '../../src/http/patient-intake-routes.ts';
import { IntakeStateStore } from '../../src/intake/intake-state-store.ts';
import { sharedRateLimit } from '../../src/intake/rate-limiter.ts';
import { silentLogger } from '../../src/log.ts';
import { PatientIntake } from '../../src/patient-intake/patient-intake-service.ts';

/**
 * The interview page's rate limits across replicas: with the buckets in the shared database, a link (and an
 * address) has one budget whichever replica the balancer picks; kept per process, each replica would grant its
 * own. Two routers, each with its own connection to one database, stand for two replicas.
 */
const perLinkPerMinute = 4;
const closers: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const close of closers.splice(0).reverse()) await close();
});

async function replica(store?: IntakeStateStore): Promise<string> {
  const config = patientIntakeConfigSchema.parse({
    enabled: true,
    secret: 'replica-rate-limit-test-secret-0123456789',
    rateLimit: { perLinkPerMinute, perAddressPerMinute: 1000 },
  });
  const intake = new PatientIntake({
    config,
    secret: config.secret as string,
    // Never called: a forged token is refused before anything is read.
    fhir: new FhirClient({ baseUrl: 'http://127.0.0.1:9/fhir' }),
    publicUrl: 'http://localhost',
    logger: silentLogger(),
  });
  const app = express();
  app.use(
    patientIntakeRouter({
      intake,
      logger: silentLogger(),
      rateLimit: config.rateLimit,
      ...(store
        ? {
            rateLimits: {
              perLink: sharedRateLimit(store, 'intake-link', perLinkPerMinute),
              perAddress: sharedRateLimit(store, 'intake-address', 1000),
            },
          }
        : {}),
    }),
  );
  const server: Server = await new Promise((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  closers.push(() => new Promise<void>((resolve) => server.close(() => resolve())));
  return `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
}

async function statuses(replicas: string[], requests: number): Promise<number[]> {
  const seen: number[] = [];
  for (let index = 0; index < requests; index++) {
    const response = await fetch(`${replicas[index % replicas.length]}/intake/not-a-real-link-token`);
    await response.text();
    seen.push(response.status);
  }
  return seen;
}

describe('the intake page rate limits with replicas', () => {
  it('spends one budget per link across replicas sharing the database', async () => {
    const directory = mkdtempSync(path.join(tmpdir(), 'intake-replicas-'));
    closers.push(() => rmSync(directory, { recursive: true, force: true }));
    const file = path.join(directory, 'intake.sqlite');
    const first = new IntakeStateStore(file);
    const second = new IntakeStateStore(file);
    closers.push(
      () => first.close(),
      () => second.close(),
    );
    const replicas = [await replica(first), await replica(second)];
    const seen = await statuses(replicas, 2 * perLinkPerMinute);
    // Forged (404) until the link's one budget is spent, then 429 from either replica.
    expect(seen.slice(0, perLinkPerMinute)).toEqual(Array(perLinkPerMinute).fill(404));
    expect(seen.slice(perLinkPerMinute)).toEqual(Array(perLinkPerMinute).fill(429));
    const refused = await fetch(`${replicas[1]}/intake/not-a-real-link-token`);
    expect(refused.status).toBe(429);
    expect(Number(refused.headers.get('retry-after'))).toBeGreaterThanOrEqual(1);
  });

  it('without the shared buckets each replica grants its own budget (what sharing prevents)', async () => {
    const replicas = [await replica(), await replica()];
    const seen = await statuses(replicas, 2 * perLinkPerMinute);
    expect(seen).toEqual(Array(2 * perLinkPerMinute).fill(404));
  });
});
