import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterEach, describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.ts';
import { startService } from '../../src/service.ts';
import { startFaultProxy } from '../support/fault-proxy.ts';
import { notifySecret, testConfig, waitFor } from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';
import { startSandboxFhirProcess } from '../support/sandbox-fhir.ts';

/**
 * Faults: the FHIR server (the project's sandbox EHR engine, in its own process), behind a proxy that
 * answers 503/429 with Retry-After on 30% of calls and never answers 5% (half of those after the
 * server did the work, so the client cannot know whether a write happened). Every event completes,
 * and no draft is written twice.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

describe('FHIR server faults', () => {
  it('every event completes; no draft and no Device is written twice', async () => {
    const events = 40;
    const fhir = await startSandboxFhirProcess(events);
    cleanups.push(() => fhir.close());
    const proxy = await startFaultProxy({ target: fhir.url, throttleRate: 0.3, timeoutRate: 0.05 });
    cleanups.push(() => proxy.close());
    const dataDir = mkdtempSync(path.join(tmpdir(), 'faults-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const config = testConfig(proxy.url, dataDir, {
      fhir: { timeoutMs: 400, maxAttempts: 4 },
      queue: { maxAttempts: 40, backoffBaseMs: 50, backoffMaxMs: 300, concurrency: 4 },
    });
    const service = await startService(config, silentLogger());
    cleanups.push(() => service.close());

    for (const [index, id] of fhir.encounterIds.entries()) {
      const response = await fetch(`${service.url}/notify`, {
        method: 'POST',
        headers: { authorization: `Bearer ${notifySecret}`, 'content-type': 'application/fhir+json' },
        body: JSON.stringify(
          notificationBundle({
            subscription: 'Subscription/faults',
            counter: index + 1,
            events: [{ number: index + 1, focus: `Encounter/${id}` }],
          }),
        ),
      });
      expect(response.status).toBe(200);
    }
    await waitFor(
      async () => {
        const counts = await service.queue.counts();
        return counts.pending === 0 && counts.running === 0 && counts.done >= events;
      },
      'all jobs to finish',
      120_000,
    );
    expect((await service.queue.counts()).failed).toBe(0);
    const drafts = await fhir.drafts(config.drafts.identifierSystem);
    expect(fhir.encounterIds.filter((id) => drafts.get(id) !== 1)).toEqual([]);
    const devices = (await (await fetch(`${fhir.url}/Device`)).json()) as { entry?: unknown[] };
    expect(devices.entry ?? []).toHaveLength(1);
    // Every draft has exactly one Provenance, even when a POST the server carried out lost its answer
    // and the client retried it (the Provenance is a conditional create on its target).
    const targets = await fhir.provenanceTargets();
    expect(new Set(targets).size).toBe(events);
    expect(targets).toHaveLength(events);
    // The faults really happened.
    expect(proxy.counts.throttled).toBeGreaterThan(20);
    expect(proxy.counts.timedOut).toBeGreaterThan(0);
  }, 150_000);
});
