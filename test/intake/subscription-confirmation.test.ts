import { createHmac } from 'node:crypto';
import { existsSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { Subscription } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { createSubscriptionProgram } from '../../src/cli/subscription.ts';
import type { ServiceConfig } from '../../src/config/config-schema.ts';
import { createLogger } from '../../src/log.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { type FhirStandIn, seedEncounters, startFhirStandIn } from '../support/fhir-stand-in.ts';
import { draftsByEncounter, notifySecret, testConfig, waitFor } from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';

/**
 * A Subscription that exists is not one that delivers (Medplum stored the service's `requested`
 * Subscription and never sent a notification, while the service logged `subscription-ensured` and
 * counted on it). The service now waits for proof (handshake, heartbeat, event, or status `active`),
 * says plainly when none comes and polls by itself; on Medplum it makes the Subscription the way
 * Medplum delivers it, signed with a secret it generates and keeps.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function capturingLogger() {
  const lines: Record<string, unknown>[] = [];
  const destination = new Writable({
    write(chunk, _encoding, callback) {
      for (const line of String(chunk).split('\n').filter(Boolean)) lines.push(JSON.parse(line));
      callback();
    },
  });
  return { logger: createLogger({ level: 'info', destination }), lines };
}

const logged = (lines: Record<string, unknown>[], event: string) =>
  lines.find((line) => String(line.msg).split(':')[0] === event);

async function startRig(
  standIn: FhirStandIn,
  overrides: Parameters<typeof testConfig>[2],
  dataDir = mkdtempSync(path.join(tmpdir(), 'subscription-confirmation-')),
) {
  const { logger, lines } = capturingLogger();
  const config: ServiceConfig = testConfig(standIn.url, dataDir, overrides);
  const service: RunningService = await startService(config, logger);
  const readyz = async () => {
    const response = await fetch(`${service.url}/readyz`, {
      headers: { authorization: `Bearer ${service.adminSecret}` },
    });
    return { status: response.status, body: (await response.json()) as Record<string, unknown> };
  };
  return { service, lines, dataDir, readyz, config };
}

describe('a Subscription the server never confirms', () => {
  it('is reported unconfirmed (log, /readyz), polling takes over, and later confirmation is logged', async () => {
    // The stand-in stores the Subscription as sent (`requested`) and delivers nothing, as Medplum did.
    const standIn = await startFhirStandIn();
    cleanups.push(() => standIn.close());
    const rig = await startRig(standIn, {
      intake: {
        // Polling is off, as for a site relying on subscriptions; every second once it is turned on.
        sources: { polling: false },
        polling: { cron: '* * * * * *' },
        subscription: { ensureOnStart: true, confirmWithinMs: 300 },
      },
    });
    cleanups.push(
      () => rig.service.close(),
      () => rmSync(rig.dataDir, { recursive: true, force: true }),
    );

    const created = await waitFor(
      () => standIn.all('Subscription')[0] as unknown as Subscription | undefined,
      'the Subscription',
    );
    expect(created.status).toBe('requested');
    const warning = await waitFor(() => logged(rig.lines, 'subscription-unconfirmed'), 'the warning');
    expect(warning).toMatchObject({ level: 40, subscription: created.id, status: 'requested' });
    // The status was read again from the server at the end of the window, not taken from the create answer.
    expect(standIn.requests).toContain(`GET /Subscription/${created.id}`);

    const ready = await rig.readyz();
    expect(ready.status).toBe(200);
    expect(ready.body.subscription).toEqual({
      id: created.id,
      status: 'requested',
      confirmed: false,
      fallback: 'polling',
    });

    // A finished encounter the server never notifies about is drafted by the polling the service started itself.
    const [encounterId] = seedEncounters(standIn, 1);
    await waitFor(() => draftsByEncounter(standIn).get(encounterId) === 1, 'the draft from polling');

    // The server comes round: its handshake confirms the Subscription, and polling stands down.
    const handshake = await fetch(`${rig.service.url}/notify`, {
      method: 'POST',
      headers: { authorization: `Bearer ${notifySecret}`, 'content-type': 'application/fhir+json' },
      body: JSON.stringify(
        notificationBundle({
          subscription: `${standIn.url}/Subscription/${created.id}`,
          type: 'handshake',
          status: 'requested',
          counter: 0,
        }),
      ),
    });
    expect(handshake.status).toBe(200);
    expect(await waitFor(() => logged(rig.lines, 'subscription-confirmed'), 'confirmation')).toMatchObject({
      subscription: created.id,
      by: 'handshake',
    });
    expect((await rig.readyz()).body.subscription).toEqual({
      id: created.id,
      status: 'requested',
      confirmed: true,
    });
  });
});

describe('Medplum', () => {
  it('gets an active, signed Subscription whose generated secret verifies X-Signature without configuration', async () => {
    const standIn = await startFhirStandIn({ software: { name: 'Medplum', version: '5.0.10' } });
    cleanups.push(() => standIn.close());
    // Nothing Medplum-specific configured: no intake.medplumSecrets, the default (Backport) mode.
    const rig = await startRig(standIn, {
      intake: { subscription: { ensureOnStart: true, confirmWithinMs: 60_000 } },
    });
    cleanups.push(() => rmSync(rig.dataDir, { recursive: true, force: true }));
    let service = rig.service;
    cleanups.push(() => service.close());

    const ready = await waitFor(async () => {
      const answer = await rig.readyz();
      return (answer.body.subscription as { confirmed?: boolean } | undefined)?.confirmed
        ? answer
        : undefined;
    }, 'the confirmed Subscription');
    const [created] = standIn.all('Subscription') as unknown as Subscription[];
    expect(ready.body.subscription).toEqual({ id: created.id, status: 'active', confirmed: true });
    const secretFile = path.join(rig.dataDir, 'medplum-subscription-secret');
    expect(statSync(secretFile).mode & 0o777).toBe(0o600);
    const secret = readFileSync(secretFile, 'utf8').trim();
    expect(secret.length).toBeGreaterThanOrEqual(32);
    expect(created).toMatchObject({
      status: 'active',
      criteria: 'Encounter?',
      channel: { type: 'rest-hook', endpoint: `${service.url}/notify` },
      extension: [
        { url: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret', valueString: secret },
      ],
    });
    expect(created.channel.header).toBeUndefined();

    // A delivery as Medplum sends it: the bare resource, signed, naming the subscription; no bearer.
    const [encounterId] = seedEncounters(standIn, 1);
    const body = JSON.stringify(standIn.get('Encounter', encounterId));
    const deliver = (signature: string) =>
      fetch(`${service.url}/notify`, {
        method: 'POST',
        headers: {
          'content-type': 'application/fhir+json',
          'x-signature': signature,
          'x-medplum-subscription': created.id as string,
          'x-medplum-interaction': 'update',
        },
        body,
      });
    const wrong = createHmac('sha256', 'not-the-secret-0123456789').update(body).digest('hex');
    expect((await deliver(wrong)).status).toBe(401);
    const signed = createHmac('sha256', secret).update(body).digest('hex');
    expect((await deliver(signed)).status).toBe(200);
    await waitFor(() => draftsByEncounter(standIn).get(encounterId) === 1, 'the draft');

    // After a restart (same address) the same Subscription, with the same secret, is found rather than made again.
    const port = Number(new URL(service.url).port);
    await service.close();
    const again = await startRig(
      standIn,
      { port, intake: { subscription: { ensureOnStart: true } } },
      rig.dataDir,
    );
    service = again.service;
    await waitFor(() => logged(again.lines, 'subscription-ensured'), 'the ensure after restart');
    expect(logged(again.lines, 'subscription-ensured')).toMatchObject({ action: 'found', server: 'medplum' });
    expect(standIn.all('Subscription')).toHaveLength(1);
    expect(readFileSync(secretFile, 'utf8').trim()).toBe(secret);
  });

  it('replicas without a shared data directory share the configured secret: the second finds the Subscription as it is', async () => {
    const standIn = await startFhirStandIn({ software: { name: 'Medplum', version: '5.0.10' } });
    cleanups.push(() => standIn.close());
    const medplumSubscriptionSecret = 'shared-by-every-pod-0123456789abcdef';
    // Two pods behind one address, each with its own (empty) data directory, as a Kubernetes Deployment runs them.
    const replica = async () => {
      const rig = await startRig(standIn, {
        publicUrl: 'https://agent.hospital.example',
        intake: { medplumSubscriptionSecret, subscription: { ensureOnStart: true } },
      });
      cleanups.push(() => rmSync(rig.dataDir, { recursive: true, force: true }));
      cleanups.push(() => rig.service.close());
      await waitFor(() => logged(rig.lines, 'subscription-ensured'), 'the ensure');
      return rig;
    };
    const first = await replica();
    const second = await replica();
    expect(logged(first.lines, 'subscription-ensured')).toMatchObject({
      action: 'created',
      server: 'medplum',
    });
    expect(logged(second.lines, 'subscription-ensured')).toMatchObject({
      action: 'found',
      server: 'medplum',
    });
    const [subscription] = standIn.all('Subscription') as unknown as Subscription[];
    expect(standIn.all('Subscription')).toHaveLength(1);
    expect(subscription.extension).toEqual([
      {
        url: 'https://www.medplum.com/fhir/StructureDefinition/subscription-secret',
        valueString: medplumSubscriptionSecret,
      },
    ]);
    for (const rig of [first, second])
      expect(existsSync(path.join(rig.dataDir, 'medplum-subscription-secret'))).toBe(false);
  });
});

describe('subscription check', () => {
  it('exits 1 with a plain sentence while the Subscription is only requested', async () => {
    const standIn = await startFhirStandIn();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'subscription-check-'));
    cleanups.push(
      () => standIn.close(),
      () => rmSync(dataDir, { recursive: true, force: true }),
    );
    const config = { ...testConfig(standIn.url, dataDir), publicUrl: 'http://agent.example' };
    const run = async (...args: string[]) => {
      const output = { out: '', err: '' };
      const io = { out: (text: string) => (output.out += text), err: (text: string) => (output.err += text) };
      process.exitCode = 0;
      await createSubscriptionProgram({ io, config: () => config }).parseAsync(args, { from: 'user' });
      const exitCode = process.exitCode;
      process.exitCode = 0;
      return { ...output, exitCode };
    };
    await run('ensure');
    const [subscription] = standIn.all('Subscription');
    expect(subscription.status).toBe('requested');

    const checked = await run('check');
    expect(checked.exitCode).toBe(1);
    expect(checked.out).toBe('');
    expect(checked.err).toContain(`${subscription.id}\trequested`);
    expect(checked.err).toMatch(/A requested Subscription is not usable: the server has not confirmed it/);

    standIn.write({ ...subscription, status: 'active' });
    const confirmed = await run('check');
    expect(confirmed.exitCode).toBe(0);
    expect(confirmed.out).toMatch(/^ok\t/);
  });
});
