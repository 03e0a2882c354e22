import { mkdtempSync, rmSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { DatabaseSync } from 'node:sqlite';
import { Writable } from 'node:stream';
import { gzipSync } from 'node:zlib';
import express from 'express';
import { afterEach, describe, expect, it } from 'vitest';
import { configSchema, type ServiceConfig } from '../../src/config/config-schema.ts';
import { createCdsHooksRouter } from '../../src/http/cds-hooks.ts';
import { operationOutcomeErrorHandler } from '../../src/http/errors.ts';
import { medplumSignature } from '../../src/intake/medplum-signature.ts';
import { createLogger, silentLogger } from '../../src/log.ts';
import { InMemoryNudgeStore } from '../../src/rules/nudge-store.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { type FhirStandIn, startFhirStandIn } from '../support/fhir-stand-in.ts';
import { notifySecret, testConfig, waitFor } from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';

/**
 * Bad input at the notification endpoint, as an adversarial review sent it: each answer is a 4xx
 * OperationOutcome (never a 500), nothing is queued or fetched, intake state does not grow with what a
 * sender makes up, the log does not carry untrusted strings whole, and the failed-authentication
 * limiter counts every failure without ever refusing valid credentials.
 */
type Overrides = Parameters<typeof testConfig>[2];

interface Running {
  service: RunningService;
  standIn: FhirStandIn;
  config: ServiceConfig;
  /** Every log line, parsed, at debug level. */
  logs: { level: number; msg: string; [key: string]: unknown }[];
  logText: () => string;
  post(pathname: string, body: unknown, headers?: Record<string, string>, method?: string): Promise<Response>;
  metric(name: string, labels: Record<string, string>): Promise<number>;
  subscriptionRows(): string[];
  queueIsEmpty(): Promise<boolean>;
}

const running: (() => Promise<void>)[] = [];
afterEach(async () => {
  for (const close of running.splice(0).reverse()) await close();
});

async function start(overrides: Overrides = {}): Promise<Running> {
  const standIn = await startFhirStandIn();
  const dataDir = mkdtempSync(path.join(tmpdir(), 'bad-input-'));
  const config = testConfig(standIn.url, dataDir, overrides);
  const lines: string[] = [];
  const destination = new Writable({
    write(chunk, _encoding, done) {
      lines.push(...String(chunk).split('\n').filter(Boolean));
      done();
    },
  });
  const service = await startService(config, createLogger({ level: 'debug', destination }));
  running.push(async () => {
    await service.close();
    await standIn.close();
    rmSync(dataDir, { recursive: true, force: true });
  });
  return {
    service,
    standIn,
    config,
    get logs() {
      return lines.map((line) => JSON.parse(line));
    },
    logText: () => lines.join('\n'),
    post: (pathname, body, headers = {}, method = 'POST') =>
      fetch(`${service.url}${pathname}`, {
        method,
        headers: {
          authorization: `Bearer ${notifySecret}`,
          'content-type': 'application/fhir+json',
          ...headers,
        },
        body:
          body === undefined
            ? undefined
            : typeof body === 'string'
              ? body
              : Buffer.isBuffer(body)
                ? new Uint8Array(body)
                : JSON.stringify(body),
      }),
    async metric(name, labels) {
      const text = await (
        await fetch(`${service.url}/metrics`, { headers: { authorization: `Bearer ${service.adminSecret}` } })
      ).text();
      const wanted = Object.entries(labels).map(([key, value]) => `${key}="${value}"`);
      const line = text
        .split('\n')
        .find(
          (candidate) =>
            candidate.startsWith(`${name}{`) && wanted.every((label) => candidate.includes(label)),
        );
      return line ? Number(line.split(' ').pop()) : 0;
    },
    subscriptionRows() {
      const database = new DatabaseSync(path.join(dataDir, 'intake.sqlite'), { readOnly: true });
      try {
        const rows = database
          .prepare(
            'select subscription from subscription_state union select subscription from subscription_seen',
          )
          .all() as { subscription: string }[];
        return rows.map((row) => row.subscription);
      } finally {
        database.close();
      }
    },
    async queueIsEmpty() {
      const counts = await service.queue.counts();
      return counts.pending + counts.running + counts.done + counts.failed === 0;
    },
  };
}

/** A request sent as written: fetch would resolve `..` in the path before sending it. */
function rawRequest(
  url: string,
  options: { method: string; path: string; headers: Record<string, string>; body?: string },
): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const target = new URL(url);
    const outgoing = httpRequest(
      {
        host: target.hostname,
        port: target.port,
        method: options.method,
        path: options.path,
        headers: options.headers,
      },
      (response) => {
        let body = '';
        response.setEncoding('utf8');
        response.on('data', (chunk) => {
          body += chunk;
        });
        response.on('end', () => resolve({ status: response.statusCode ?? 0, body }));
      },
    );
    outgoing.on('error', reject);
    outgoing.end(options.body);
  });
}

const eventBundle = (focus: string, subscription = 'Subscription/bad-input') =>
  notificationBundle({ subscription, counter: 1, events: [{ number: 1, focus }] });

async function expectOutcome(response: Response, status: number): Promise<void> {
  expect(response.status).toBe(status);
  expect(response.headers.get('content-type')).toMatch(/application\/fhir\+json/);
  expect((await response.json()).resourceType).toBe('OperationOutcome');
}

describe('nesting', () => {
  it('Parameters parts nested 1,000 deep: 400, not a stack overflow; the Backport shape still passes', async () => {
    const current = await start();
    let part: unknown[] = [{ name: 'leaf', valueString: 'x' }];
    for (let depth = 0; depth < 1_000; depth++) part = [{ name: 'nested', part }];
    const bundle = eventBundle('Encounter/deep-1');
    const parameters = bundle.entry[0].resource.parameter as { name: string; part?: unknown[] }[];
    parameters
      .find((parameter) => parameter.name === 'notification-event')
      ?.part?.push({ name: 'extra', part });
    const response = await current.post('/notify', bundle);
    await expectOutcome(response, 400);
    expect(current.logs.some((line) => line.level >= 50)).toBe(false);
    expect(await current.queueIsEmpty()).toBe(true);

    const ordinary = await current.post('/notify', eventBundle('Encounter/deep-2'));
    expect(ordinary.status).toBe(200);
  });
});

describe('body-parser failures, each its own 4xx', () => {
  it('gzip that is not gzip, truncated gzip, an unknown encoding, too large: 400, 400, 415, 413, no server error', async () => {
    const current = await start({ notify: { maxBodyBytes: 4_096 } });
    const body = JSON.stringify(eventBundle('Encounter/gzip-1'));
    const notGzip = await current.post('/notify', body, { 'content-encoding': 'gzip' });
    await expectOutcome(notGzip, 400);
    const compressed = gzipSync(body);
    const truncated = await current.post('/notify', compressed.subarray(0, compressed.length >> 1), {
      'content-encoding': 'gzip',
    });
    await expectOutcome(truncated, 400);
    const unknown = await current.post('/notify', body, { 'content-encoding': 'compress' });
    await expectOutcome(unknown, 415);
    const tooLarge = await current.post('/notify', JSON.stringify({ padding: 'x'.repeat(8_000) }));
    await expectOutcome(tooLarge, 413);
    // Whole gzip is fine: the failures above are about the body, not about compression.
    expect((await current.post('/notify', compressed, { 'content-encoding': 'gzip' })).status).toBe(200);
    expect(current.logs.filter((line) => line.level >= 50)).toEqual([]);
  });

  it('a client that goes away mid-body is logged at debug, not as a server error', async () => {
    const current = await start();
    const { port } = new URL(current.service.url);
    await new Promise<void>((resolve, reject) => {
      const socket = connect(Number(port), '127.0.0.1', () => {
        socket.write(
          [
            'POST /notify HTTP/1.1',
            `Host: 127.0.0.1:${port}`,
            `Authorization: Bearer ${notifySecret}`,
            'Content-Type: application/fhir+json',
            'Content-Length: 100000',
            '',
            '{"resourceType":"Bundle",',
          ].join('\r\n'),
          () => setTimeout(() => socket.destroy(), 50),
        );
      });
      socket.on('close', () => resolve());
      socket.on('error', reject);
    });
    await waitFor(
      () => current.logs.some((line) => line.msg === 'request-aborted-by-client' && line.level === 20),
      'the abort logged at debug',
      5_000,
    );
    expect(current.logs.filter((line) => line.level >= 50)).toEqual([]);
  });

  it('the other routers that parse JSON answer body failures the same way', async () => {
    // The review API's shape (express.json, then the shared handler) and the CDS Hooks router.
    const app = express();
    app.post('/json', express.json({ type: 'application/json', limit: 1_024 }), (_request, response) => {
      response.json({});
    });
    app.use(
      createCdsHooksRouter({
        ruleSet: () => {
          throw new Error('not reached: the body fails first');
        },
        store: new InMemoryNudgeStore(),
        reviewAppUrl: 'https://review.example/launch',
        timeBudgetMs: 1_000,
        logger: silentLogger(),
        maxBodyBytes: 1_024,
      }),
    );
    app.use(operationOutcomeErrorHandler(silentLogger()));
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    running.push(() => new Promise((resolve) => server.close(() => resolve())));
    const { port } = server.address() as { port: number };
    const send = (pathname: string, body: string, headers: Record<string, string>) =>
      fetch(`http://127.0.0.1:${port}${pathname}`, {
        method: 'POST',
        headers: { 'content-type': 'application/json', ...headers },
        body,
      });
    const cases: [Record<string, string>, string, number][] = [
      [{ 'content-type': 'application/json; charset=klingon' }, '{}', 415],
      [{ 'content-encoding': 'gzip' }, '{}', 400],
      [{ 'content-encoding': 'compress' }, '{}', 415],
      [{}, JSON.stringify({ padding: 'x'.repeat(2_000) }), 413],
      [{}, '{not json', 400],
    ];
    for (const pathname of ['/json', '/cds-services/guideline-nudges-patient-view']) {
      for (const [headers, body, status] of cases) {
        const response = await send(pathname, body, headers);
        expect(response.status, `${pathname} ${JSON.stringify(headers)}`).toBe(status);
        expect((await response.json()).resourceType).toBe('OperationOutcome');
      }
    }
  });
});

describe('ids made only of dots', () => {
  it('are refused at intake with a 4xx, whichever source names them, and nothing is queued or fetched', async () => {
    const secret = 'medplum-secret-0123456789';
    const current = await start({ intake: { medplumSecrets: { 'medplum-sub': secret } } });
    await expectOutcome(await current.post('/notify', { resourceType: 'Encounter', id: '..' }), 422);
    await expectOutcome(
      await current.post('/notify', { resourceType: 'Encounter', id: 'ok-1', meta: { versionId: '..' } }),
      422,
    );
    await expectOutcome(await current.post('/notify', eventBundle('Encounter/..')), 422);
    await expectOutcome(await current.post('/notify', eventBundle('Patient/..')), 422);
    await expectOutcome(
      await current.post('/notify', eventBundle('https://ehr.example/fhir/Encounter/.')),
      422,
    );
    const signedBody = JSON.stringify({ resourceType: 'Encounter', id: '.' });
    await expectOutcome(
      await current.post('/notify', signedBody, {
        authorization: '',
        'x-signature': medplumSignature(Buffer.from(signedBody), secret),
        'x-medplum-subscription': 'medplum-sub',
      }),
      422,
    );
    for (const id of ['..', '%2E%2E', '.']) {
      const put = await rawRequest(current.service.url, {
        method: 'PUT',
        path: `/notify/Encounter/${id}`,
        headers: { authorization: `Bearer ${notifySecret}`, 'content-length': '0' },
      });
      expect(put.status, id).toBe(400);
      expect(JSON.parse(put.body).resourceType).toBe('OperationOutcome');
    }
    expect(await current.queueIsEmpty()).toBe(true);
    expect(current.standIn.requests).toEqual([]);
  });
});

describe('subscription references', () => {
  it('longer than a kilobyte: 400, nothing stored', async () => {
    const current = await start();
    for (const length of [2_000, 900_000]) {
      const subscription = `https://ehr.example/fhir/Subscription/${'a'.repeat(length)}`;
      const heartbeat = notificationBundle({ subscription, type: 'heartbeat', counter: 0 });
      await expectOutcome(await current.post('/notify', heartbeat), 400);
    }
    expect(current.subscriptionRows()).toEqual([]);
  });

  it('only the subscription the service ensured and the configured ones are stored; others are answered and counted', async () => {
    const current = await start({
      intake: {
        subscription: { ensureOnStart: true },
        trackedSubscriptions: ['https://partner.example/fhir/Subscription/configured'],
      },
    });
    // The service ensures its own Subscription on the FHIR server in the background.
    await waitFor(
      () => current.logs.some((line) => line.msg === 'subscription-ensured'),
      'subscription ensured',
    );
    const ownId = current.standIn.all('Subscription')[0]?.id as string;
    const own = `${current.standIn.url}/Subscription/${ownId}`;
    const heartbeat = (subscription: string) =>
      current.post('/notify', notificationBundle({ subscription, type: 'heartbeat', counter: 0 }));

    expect((await heartbeat(own)).status).toBe(200);
    expect((await heartbeat('https://partner.example/fhir/Subscription/configured')).status).toBe(200);
    const strangers = 40;
    for (let index = 0; index < strangers; index++) {
      const madeUp = `https://ehr.example/fhir/Subscription/${index}-${'z'.repeat(900)}`;
      expect((await heartbeat(madeUp)).status).toBe(200);
    }
    // Spelled another way on the same server, the configured one is still one subscription, stored once.
    expect((await heartbeat('https://partner.example/fhir/Subscription/configured/_history/2')).status).toBe(
      200,
    );
    // The same id on another server is another subscription, and not one of ours.
    expect((await heartbeat('https://elsewhere.example/fhir/Subscription/configured')).status).toBe(200);
    expect(current.subscriptionRows().sort()).toEqual(
      [`Subscription/${ownId}`, 'https://partner.example/fhir/Subscription/configured'].sort(),
    );
    expect(
      await current.metric('ehr_agent_intake_events_total', {
        source: 'backport',
        outcome: 'untracked-subscription',
      }),
    ).toBe(strangers + 1);
    // Their events are still worked: a notification is a hint, and this one was authenticated.
    const event = await current.post('/notify', eventBundle('Encounter/hint-1', 'Subscription/stranger'));
    expect(event.status).toBe(200);
    const jobs = [
      ...(await current.service.queue.list('pending')),
      ...(await current.service.queue.list('running')),
      ...(await current.service.queue.list('done')),
    ];
    expect(jobs.map((job) => job.encounterId)).toContain('hint-1');
    expect(current.subscriptionRows()).not.toContain('Subscription/stranger');
  });

  it('untrusted strings never reach the log whole', async () => {
    const current = await start();
    // Just under the length cap, so the notification is accepted and logged.
    const subscription = `https://ehr.example/fhir/Subscription/${'q'.repeat(900)}`;
    const bundle = notificationBundle({ subscription, type: 'heartbeat', counter: 0 });
    expect((await current.post('/notify', bundle)).status).toBe(200);
    await waitFor(
      () => current.logs.some((line) => line.msg === 'notification-received'),
      'the notification logged',
    );
    expect(current.logText()).not.toContain('q'.repeat(200));
  });
});

describe('the failed-authentication limiter', () => {
  it('never refuses the right bearer, even from an address at its limit', async () => {
    const current = await start({ intake: { rateLimit: { unauthenticatedPerMinute: 3 } } });
    const body = notificationBundle({ subscription: 'Subscription/x', type: 'heartbeat', counter: 0 });
    const wrong = [];
    for (let attempt = 0; attempt < 5; attempt++)
      wrong.push(
        (await current.post('/notify', body, { authorization: 'Bearer wrong-secret-of-length' })).status,
      );
    expect(wrong).toEqual([401, 401, 401, 429, 429]);
    expect((await current.post('/notify', body)).status).toBe(200);
    expect(
      (await current.post('/notify/Encounter/right-1', undefined, { 'content-type': '' }, 'PUT')).status,
    ).toBe(200);
    expect((await current.post('/notify', body, { authorization: '' })).status).toBe(429);
  });

  it('never refuses a valid Medplum signature; failures before the signature check spend tokens', async () => {
    const secret = 'medplum-secret-0123456789';
    const current = await start({
      notify: { maxBodyBytes: 2_048 },
      intake: { medplumSecrets: { 'medplum-sub': secret }, rateLimit: { unauthenticatedPerMinute: 4 } },
    });
    const signed = (raw: Buffer | string, extra: Record<string, string> = {}) => ({
      authorization: '',
      'x-signature': medplumSignature(Buffer.from(raw), secret),
      'x-medplum-subscription': 'medplum-sub',
      ...extra,
    });
    const tooLarge = JSON.stringify({ resourceType: 'Encounter', id: 'big', padding: 'x'.repeat(4_000) });
    const notGzip = JSON.stringify({ resourceType: 'Encounter', id: 'gz' });
    const statuses = [
      (await current.post('/notify', tooLarge, signed(tooLarge))).status,
      (await current.post('/notify', notGzip, signed(notGzip, { 'content-encoding': 'gzip' }))).status,
      (await current.post('/notify', notGzip, signed(notGzip, { 'content-encoding': 'compress' }))).status,
      (await current.post('/notify', notGzip, signed('something else'))).status,
      (await current.post('/notify', tooLarge, signed(tooLarge))).status,
    ];
    expect(statuses).toEqual([413, 400, 415, 401, 429]);
    const valid = JSON.stringify({ resourceType: 'Encounter', id: 'signed-1' });
    expect((await current.post('/notify', valid, signed(valid))).status).toBe(200);
  });

  it('counts the socket peer, not an X-Forwarded-For header, unless http.trustProxy names the proxy', async () => {
    const body = notificationBundle({ subscription: 'Subscription/x', type: 'heartbeat', counter: 0 });
    const wrongFrom = (current: Running, address: string) =>
      current.post('/notify', body, { authorization: 'Bearer wrong', 'x-forwarded-for': address });

    const direct = await start({ intake: { rateLimit: { unauthenticatedPerMinute: 2 } } });
    const directStatuses = [];
    for (const address of ['203.0.113.1', '203.0.113.2', '203.0.113.3', '203.0.113.4'])
      directStatuses.push((await wrongFrom(direct, address)).status);
    // One client behind four made-up addresses: one quota.
    expect(directStatuses).toEqual([401, 401, 429, 429]);

    const proxied = await start({
      http: { trustProxy: ['loopback'] },
      intake: { rateLimit: { unauthenticatedPerMinute: 2 } },
    });
    const proxiedStatuses = [];
    for (const address of ['203.0.113.1', '203.0.113.1', '203.0.113.1', '203.0.113.2'])
      proxiedStatuses.push((await wrongFrom(proxied, address)).status);
    // Behind a named proxy, the forwarded client is the one counted.
    expect(proxiedStatuses).toEqual([401, 401, 429, 401]);
  });

  it('http.trustProxy is validated: off by default, booleans, hop counts, addresses and CIDR ranges', () => {
    const parse = (trustProxy: unknown) => configSchema.parse({ http: { trustProxy } }).http.trustProxy;
    expect(configSchema.parse({}).http.trustProxy).toBe(false);
    expect(parse(true)).toBe(true);
    expect(parse('true')).toBe(true);
    expect(parse('2')).toBe(2);
    expect(parse('loopback, 10.0.0.0/8')).toEqual(['loopback', '10.0.0.0/8']);
    expect(parse(['::1', 'fd00::/8', '192.168.1.7'])).toEqual(['::1', 'fd00::/8', '192.168.1.7']);
    for (const invalid of [['proxy.example'], ['10.0.0.0/33'], ['1.2.3.4/x'], -1, []])
      expect(() => parse(invalid), JSON.stringify(invalid)).toThrow();
  });
});
