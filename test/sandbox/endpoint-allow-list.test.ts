// biome-ignore-all lint/suspicious/noExplicitAny: the tests read untyped FHIR JSON from the sandbox.
import { afterEach, describe, expect, it } from 'vitest';
import { ObservedRepository } from '../../src/sandbox/observed-repository.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { SandboxSubscriptions } from '../../src/sandbox/sandbox-subscriptions.ts';

const allowed = 'http://127.0.0.1:3000/notify';

describe('subscription endpoint allow-list', () => {
  it('allows nothing by default, not even loopback', () => {
    const subscriptions = new SandboxSubscriptions(new ObservedRepository(), () => undefined);
    for (const endpoint of [
      allowed,
      'https://localhost/notify',
      'http://[::1]:9000/notify',
      'http://inferno.healthit.gov/notify',
      'ftp://127.0.0.1/notify',
      'not a url',
      undefined,
    ])
      expect(subscriptions.endpointAllowed(endpoint), String(endpoint)).toBe(false);
  });

  it('allows configured endpoints exactly: no prefix, path, user-info or host tricks', () => {
    const subscriptions = new SandboxSubscriptions(new ObservedRepository(), () => undefined, {
      allowedEndpoints: [allowed],
    });
    expect(subscriptions.endpointAllowed(allowed)).toBe(true);
    // The same URL written differently is the same endpoint.
    expect(subscriptions.endpointAllowed('HTTP://127.0.0.1:3000/notify')).toBe(true);
    expect(subscriptions.endpointAllowed('http://127.0.0.1:3000/x/../notify')).toBe(true);
    for (const trick of [
      'http://127.0.0.1:3000/notify.evil',
      'http://127.0.0.1:3000/notify/',
      'http://127.0.0.1:3000/notify/x',
      'http://127.0.0.1:3000/notify/../x',
      'http://127.0.0.1:3000/notify/..%2Fx',
      'http://127.0.0.1:3000/%6Eotify',
      'http://127.0.0.1:3000/notify?to=elsewhere',
      'http://127.0.0.1:3000/notify#fragment',
      'http://user@127.0.0.1:3000/notify',
      'http://user:password@127.0.0.1:3000/notify',
      'http://@127.0.0.1:3000/notify',
      'http://127.0.0.1:3000@evil.example/notify',
      'https://127.0.0.1:3000/notify',
      'http://127.0.0.1:3001/notify',
      'http://localhost:3000/notify',
      'http://127.0.0.1.example.org:3000/notify',
    ])
      expect(subscriptions.endpointAllowed(trick), trick).toBe(false);
  });

  it('allows one more endpoint at a time, exactly, and refuses to allow a URL that is not plain http(s)', () => {
    const subscriptions = new SandboxSubscriptions(new ObservedRepository(), () => undefined);
    subscriptions.allowEndpoint('https://hooks.example.org/receiver');
    expect(subscriptions.endpointAllowed('https://hooks.example.org/receiver')).toBe(true);
    expect(subscriptions.endpointAllowed('https://hooks.example.org/any/path')).toBe(false);
    expect(subscriptions.endpointAllowed('https://hooks.example.org/receiver/more')).toBe(false);
    expect(() => subscriptions.allowEndpoint('ftp://hooks.example.org/receiver')).toThrow();
    expect(() => subscriptions.allowEndpoint('http://user@hooks.example.org/receiver')).toThrow();
  });
});

describe('every way of writing a Subscription is checked', () => {
  let sandbox: SandboxEhr | undefined;
  afterEach(async () => {
    await sandbox?.close();
    sandbox = undefined;
  });

  const subscription = (endpoint: string, extra: Record<string, unknown> = {}) => ({
    resourceType: 'Subscription',
    status: 'requested',
    reason: 'allow-list',
    criteria: 'Encounter?',
    channel: { type: 'rest-hook', endpoint, payload: 'application/fhir+json' },
    ...extra,
  });
  const elsewhere = 'http://127.0.0.1:3000/elsewhere';
  const json = 'application/fhir+json';
  const stored = async () =>
    ((await sandbox!.repository.search({ resourceType: 'Subscription' })).entry ?? []).map(
      (entry) => entry.resource as any,
    );

  it('refuses a not-allowed endpoint on create, update, conditional writes, patch and in bundles', async () => {
    // Retries off and the allowed endpoint unreachable: handshakes fail fast, which is not what is tested here.
    sandbox = createSandboxEhr({ subscriptions: { allowedEndpoints: [allowed], retryDelaysMs: [] } });
    const handle = (method: string, url: string, body?: unknown, headers: Record<string, string> = {}) =>
      sandbox!.handle({ method, url, body, headers: { 'content-type': json, ...headers } });

    const create = await handle('POST', 'Subscription', subscription(elsewhere));
    expect(create.status).toBe(422);
    expect((create.body as any).issue[0]).toMatchObject({
      code: 'business-rule',
      expression: ['Subscription.channel.endpoint'],
    });
    const conditionalCreate = await handle('POST', 'Subscription', subscription(elsewhere), {
      'if-none-exist': 'url=http://127.0.0.1:3000/elsewhere',
    });
    expect(conditionalCreate.status, JSON.stringify(conditionalCreate.body)).toBe(422);
    const conditionalUpdate = await handle('PUT', 'Subscription?url=http://127.0.0.1:3000/elsewhere', {
      ...subscription(elsewhere),
    });
    expect(conditionalUpdate.status, JSON.stringify(conditionalUpdate.body)).toBe(422);
    const bundle = await handle('POST', '', {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [{ resource: subscription(elsewhere), request: { method: 'POST', url: 'Subscription' } }],
    });
    expect((bundle.body as any).entry[0].response.status).toBe('422');
    expect(await stored()).toHaveLength(0);

    const good = await handle('POST', 'Subscription', subscription(allowed));
    expect(good.status).toBe(201);
    const id = (good.body as any).id;
    const moved = await handle('PUT', `Subscription/${id}`, {
      ...(good.body as any),
      channel: { type: 'rest-hook', endpoint: elsewhere },
    });
    expect(moved.status).toBe(422);
    const patched = await handle('PATCH', `Subscription/${id}`, [
      { op: 'replace', path: '/channel/endpoint', value: elsewhere },
    ]);
    expect(patched.status).toBe(422);
    expect((await stored()).map((item) => item.channel.endpoint)).toEqual([allowed]);

    // A subscription that is off notifies no one, whatever its endpoint; switching it on is checked again.
    const current = (await stored())[0];
    const off = await handle('PUT', `Subscription/${id}`, {
      ...current,
      status: 'off',
      channel: { ...current.channel, endpoint: elsewhere },
    });
    expect(off.status).toBe(200);
    expect((off.body as any).status).toBe('off');
    const on = await handle('PUT', `Subscription/${id}`, { ...(off.body as any), status: 'requested' });
    expect(on.status).toBe(422);
    expect((await stored())[0].status).toBe('off');
  });
});
