import { afterEach, describe, expect, it } from 'vitest';
import { type FaultProxy, startFaultProxy } from '../support/fault-proxy.ts';
import { seedEncounters } from '../support/fhir-stand-in.ts';
import {
  draftsByEncounter,
  type IntakeHarness,
  startIntakeHarness,
  waitFor,
} from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';

/**
 * Faults: the FHIR server, behind a proxy, answers 503/429 with Retry-After on 30% of calls and never
 * answers 5% (half of those after doing the work). Every event still completes, and nothing is
 * written twice.
 */
let harness: IntakeHarness | undefined;
afterEach(async () => {
  await harness?.close();
  harness = undefined;
});

describe('FHIR server faults', () => {
  it('every event completes; no draft and no Device is written twice', async () => {
    let proxy: FaultProxy | undefined;
    harness = await startIntakeHarness(
      {
        fhir: { timeoutMs: 400, maxAttempts: 4 },
        queue: { maxAttempts: 40, backoffBaseMs: 50, backoffMaxMs: 300, concurrency: 4 },
      },
      {},
      async (target) => {
        proxy = await startFaultProxy({ target, throttleRate: 0.3, timeoutRate: 0.05 });
        return proxy;
      },
    );
    const ids = seedEncounters(harness.standIn, 40);
    const subscription = 'Subscription/faults';
    for (const [index, id] of ids.entries()) {
      const response = await harness.post(
        '/notify',
        notificationBundle({
          subscription,
          counter: index + 1,
          events: [{ number: index + 1, focus: `Encounter/${id}` }],
        }),
      );
      expect(response.status).toBe(200);
    }
    await waitFor(
      async () => {
        const counts = await harness?.service.queue.counts();
        return counts && counts.pending === 0 && counts.running === 0 && counts.done >= ids.length;
      },
      'all jobs to finish',
      120_000,
    );
    expect((await harness.service.queue.counts()).failed).toBe(0);
    const drafts = draftsByEncounter(harness.standIn);
    expect(ids.filter((id) => drafts.get(id) !== 1)).toEqual([]);
    expect(harness.standIn.created.get('DocumentReference')).toBe(ids.length);
    // Every draft has its Provenance. Not asserted: exactly one. fhir/draft-note.ts creates the
    // Provenance without a condition, so a POST the server carried out but whose answer was lost is
    // repeated by the client's retry (reported to its owner; a conditional create on target fixes it).
    const targets = new Set(
      harness.standIn
        .all('Provenance')
        .map((provenance) => (provenance.target as { reference: string }[])[0].reference),
    );
    expect(targets.size).toBe(ids.length);
    expect(harness.standIn.all('Device')).toHaveLength(1);
    // The faults really happened.
    expect(proxy?.counts.throttled).toBeGreaterThan(20);
    expect(proxy?.counts.timedOut).toBeGreaterThan(0);
  }, 150_000);
});
