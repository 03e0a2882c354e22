import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Event intake under load: notifications accepted per second by the service (Backport id-only
 * bundles, bearer-checked, parsed, counters tracked, each recorded in the durable SQLite queue and
 * answered 200) against a bare express 5 endpoint that only parses the same JSON and answers 200 -
 * same run, same machine, a load generator in its own process on loopback with a bounded request
 * count. Then acknowledgement latency (p50/p99) at a fixed 500 requests/s, open loop, and the
 * service's resident memory idle and under load. The service talks to a FHIR server in another
 * process; its workers drain the queue while the load runs (each job re-reads an Encounter that does
 * not exist there and ends as encounter-gone, so the drafting cost does not hide the intake's).
 * Targets: >= 0.5 x the bare endpoint's throughput; p99 <= 20 ms at 500/s; < 250 MB resident.
 */
const directory = path.dirname(fileURLToPath(import.meta.url));
const secret = 'bench-notify-secret-0123456789';
const requests = 20_000;
const concurrency = 64;
const rate = 500;
const rateSeconds = 10;

function startProcess(args: string[]): Promise<{ child: ChildProcess; url: string }> {
  const child = spawn(process.execPath, [path.join(directory, 'intake-servers.support.ts'), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  return new Promise((resolve, reject) => {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const line = buffered.split('\n')[0];
      if (buffered.includes('\n')) resolve({ child, url: line.trim() });
    });
    child.once('exit', (code) => reject(new Error(`${args[0]} exited with ${code}`)));
  });
}

interface LoadResult {
  count: number;
  errors: number;
  seconds: number;
  perSecond: number;
  p50Ms: number;
  p99Ms: number;
  maxMs: number;
}

function load(spec: Record<string, unknown>, whileRunning?: () => void): Promise<LoadResult> {
  const child = spawn(
    process.execPath,
    [path.join(directory, 'intake-load.support.ts'), JSON.stringify(spec)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const sampler = whileRunning ? setInterval(whileRunning, 100) : undefined;
  return new Promise((resolve, reject) => {
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('exit', (code) => {
      if (sampler) clearInterval(sampler);
      if (code === 0) resolve(JSON.parse(output) as LoadResult);
      else reject(new Error(`load generator exited with ${code}`));
    });
  });
}

function residentMegabytes(pid: number | undefined): number {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kilobytes = Number(/VmRSS:\s+(\d+)/.exec(status)?.[1] ?? 0);
  return Math.round(kilobytes / 1024);
}

/** An id-only event notification; `{n}` makes each one a new event for a new encounter. */
function notificationBody(): string {
  return JSON.stringify({
    resourceType: 'Bundle',
    type: 'history',
    timestamp: '2026-11-27T10:00:00Z',
    entry: [
      {
        fullUrl: 'urn:uuid:0f6e2d1c-0000-4000-8000-000000000000',
        resource: {
          resourceType: 'Parameters',
          parameter: [
            { name: 'subscription', valueReference: { reference: 'Subscription/bench' } },
            { name: 'topic', valueCanonical: 'http://hl7.org/SubscriptionTopic/encounter-change' },
            { name: 'status', valueCode: 'active' },
            { name: 'type', valueCode: 'event-notification' },
            { name: 'events-since-subscription-start', valueString: '{n}' },
            {
              name: 'notification-event',
              part: [
                { name: 'event-number', valueString: '{n}' },
                { name: 'timestamp', valueInstant: '2026-11-27T10:00:00Z' },
                { name: 'focus', valueReference: { reference: 'Encounter/bench-{n}' } },
              ],
            },
          ],
        },
      },
    ],
  });
}

export async function run(): Promise<Record<string, unknown>> {
  const children: ChildProcess[] = [];
  try {
    const fhir = await startProcess(['fhir']);
    children.push(fhir.child);
    const service = await startProcess(['service', fhir.url, secret]);
    children.push(service.child);
    const bare = await startProcess(['bare']);
    children.push(bare.child);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const idleMegabytes = residentMegabytes(service.child.pid);

    const headers = { 'content-type': 'application/fhir+json', authorization: `Bearer ${secret}` };
    const body = notificationBody();
    // Warm both up (JIT, connection pools), then measure each with the same bounded load.
    await load({ url: `${bare.url}/notify`, headers, body, requests: 2_000, concurrency });
    // Event numbers count up across the runs, as one subscription's would.
    await load({ url: `${service.url}/notify`, headers, body, requests: 500, concurrency: 8, offset: 1 });
    const bareMax = await load({ url: `${bare.url}/notify`, headers, body, requests, concurrency });
    let peakMegabytes = idleMegabytes;
    const sample = () => {
      peakMegabytes = Math.max(peakMegabytes, residentMegabytes(service.child.pid));
    };
    const serviceMax = await load(
      { url: `${service.url}/notify`, headers, body, requests, concurrency, offset: 501 },
      sample,
    );
    const serviceAtRate = await load(
      {
        url: `${service.url}/notify`,
        headers,
        body,
        offset: 501 + requests,
        rate,
        seconds: rateSeconds,
        concurrency: 256,
      },
      sample,
    );
    const bareAtRate = await load({
      url: `${bare.url}/notify`,
      headers,
      body,
      rate,
      seconds: rateSeconds,
      concurrency: 256,
    });
    return {
      requests,
      concurrency,
      // Other work on the machine skews every figure; the ratios measured in the same run less so.
      loadAverageAtEnd: Number(loadavg()[0].toFixed(1)),
      bare: {
        perSecond: bareMax.perSecond,
        errors: bareMax.errors,
        p50Ms: bareMax.p50Ms,
        p99Ms: bareMax.p99Ms,
      },
      service: {
        perSecond: serviceMax.perSecond,
        errors: serviceMax.errors,
        p50Ms: serviceMax.p50Ms,
        p99Ms: serviceMax.p99Ms,
      },
      throughputRatio: Number((serviceMax.perSecond / bareMax.perSecond).toFixed(2)),
      atFixedRate: {
        rate,
        seconds: rateSeconds,
        service: {
          p50Ms: serviceAtRate.p50Ms,
          p99Ms: serviceAtRate.p99Ms,
          maxMs: serviceAtRate.maxMs,
          errors: serviceAtRate.errors,
        },
        bare: {
          p50Ms: bareAtRate.p50Ms,
          p99Ms: bareAtRate.p99Ms,
          maxMs: bareAtRate.maxMs,
          errors: bareAtRate.errors,
        },
      },
      residentMegabytes: { idle: idleMegabytes, underLoad: peakMegabytes },
      targets: {
        throughputRatioAtLeast: 0.5,
        p99AtRateMsAtMost: 20,
        residentMegabytesBelow: 250,
        met:
          serviceMax.perSecond / bareMax.perSecond >= 0.5 && serviceAtRate.p99Ms <= 20 && peakMegabytes < 250,
      },
    };
  } finally {
    for (const child of children) child.kill('SIGTERM');
  }
}

if (import.meta.main) console.log(JSON.stringify(await run(), null, 2));
