import { type ChildProcess, spawn } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Event intake under load. Backport id-only notifications (bearer-checked, parsed, counters tracked,
 * each recorded in the durable SQLite queue before the 200) against a bare express 5 endpoint that
 * only parses the same JSON and answers 200 - same run, same machine, a load generator in its own
 * process on loopback with a bounded request count.
 * 1. Throughput and CPU per notification: intake-only service process (queue.concurrency 0) vs bare.
 * 2. Acknowledgement latency p50/p99 at a fixed 500 requests/s, open loop (from when each was due).
 * 3. The whole service (workers draining the queue beside intake; each job re-reads an Encounter the
 *    FHIR server, another process, does not have): latency at 500/s, CPU per notification with its
 *    job, and resident memory idle and under load.
 * Targets: >= 0.5 x the bare endpoint's throughput; p99 <= 20 ms at 500/s; < 250 MB resident.
 * CPU per notification is reported because absolute rates move with whatever else the machine runs.
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

/** CPU time (user + system) a process has used, in ms: robust to other load on the machine. */
function cpuMilliseconds(pid: number | undefined): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  // utime and stime are fields 14 and 15 of stat; after the command name they are at 11 and 12.
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
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

/** Waits until the service's workers have drained the queue (its readiness answer carries the counts). */
async function waitForDrain(serviceUrl: string): Promise<void> {
  for (let attempt = 0; attempt < 600; attempt++) {
    // The counts are operator detail: the admin secret (the notify secret, as no other is set).
    const readiness = (await (
      await fetch(`${serviceUrl}/readyz`, { headers: { authorization: `Bearer ${secret}` } })
    ).json()) as {
      queue?: { pending: number; running: number };
    };
    if (readiness.queue && readiness.queue.pending + readiness.queue.running === 0) return;
    await new Promise((resolve) => setTimeout(resolve, 200));
  }
}

export async function run(): Promise<Record<string, unknown>> {
  const children: ChildProcess[] = [];
  const start = async (args: string[]) => {
    const started = await startProcess(args);
    children.push(started.child);
    return started;
  };
  try {
    const fhir = await start(['fhir']);
    const bare = await start(['bare']);
    const intake = await start(['intake-only', fhir.url, secret]);
    const service = await start(['service', fhir.url, secret]);
    await new Promise((resolve) => setTimeout(resolve, 1_000));
    const idleMegabytes = residentMegabytes(service.child.pid);
    const intakeIdleMegabytes = residentMegabytes(intake.child.pid);
    let intakePeakMegabytes = intakeIdleMegabytes;
    const sampleIntake = () => {
      intakePeakMegabytes = Math.max(intakePeakMegabytes, residentMegabytes(intake.child.pid));
    };
    const headers = { 'content-type': 'application/fhir+json', authorization: `Bearer ${secret}` };
    const body = notificationBody();

    // Warm up (JIT, connection pools); event numbers count up across runs, as one subscription's would.
    await load({ url: `${bare.url}/notify`, headers, body, requests: 2_000, concurrency });
    await load({ url: `${intake.url}/notify`, headers, body, requests: 500, concurrency: 8, offset: 1 });

    // 1. Throughput, bounded count, as fast as each answers: bare endpoint vs intake (durable queue).
    const bareCpuBefore = cpuMilliseconds(bare.child.pid);
    const bareMax = await load({ url: `${bare.url}/notify`, headers, body, requests, concurrency });
    const bareCpuMs = cpuMilliseconds(bare.child.pid) - bareCpuBefore;
    const intakeCpuBefore = cpuMilliseconds(intake.child.pid);
    const intakeMax = await load(
      { url: `${intake.url}/notify`, headers, body, requests, concurrency, offset: 501 },
      sampleIntake,
    );
    const intakeCpuMs = cpuMilliseconds(intake.child.pid) - intakeCpuBefore;

    // 2. Acknowledgement latency at a fixed 500/s, open loop.
    const intakeAtRate = await load({
      url: `${intake.url}/notify`,
      headers,
      body,
      rate,
      seconds: rateSeconds,
      concurrency: 256,
      offset: 501 + requests,
    });
    const bareAtRate = await load({
      url: `${bare.url}/notify`,
      headers,
      body,
      rate,
      seconds: rateSeconds,
      concurrency: 256,
    });

    // 3. The whole service (workers draining the queue beside intake): memory, CPU, latency at 500/s.
    let peakMegabytes = idleMegabytes;
    const sample = () => {
      peakMegabytes = Math.max(peakMegabytes, residentMegabytes(service.child.pid));
    };
    const serviceCpuBefore = cpuMilliseconds(service.child.pid);
    const serviceAtRate = await load(
      {
        url: `${service.url}/notify`,
        headers,
        body,
        rate,
        seconds: rateSeconds,
        concurrency: 256,
        offset: 1,
      },
      sample,
    );
    await waitForDrain(service.url);
    sample();
    const serviceCpuMs = cpuMilliseconds(service.child.pid) - serviceCpuBefore;
    const ratedRequests = rate * rateSeconds;

    const throughputRatio = intakeMax.perSecond / bareMax.perSecond;
    return {
      requests,
      concurrency,
      // Other work on the machine skews absolute figures; ratios and CPU per request much less.
      loadAverageAtEnd: Number(loadavg()[0].toFixed(1)),
      bare: {
        perSecond: bareMax.perSecond,
        errors: bareMax.errors,
        p50Ms: bareMax.p50Ms,
        p99Ms: bareMax.p99Ms,
      },
      intake: {
        perSecond: intakeMax.perSecond,
        errors: intakeMax.errors,
        p50Ms: intakeMax.p50Ms,
        p99Ms: intakeMax.p99Ms,
      },
      throughputRatio: Number(throughputRatio.toFixed(2)),
      cpuMsPerNotification: {
        bare: Number((bareCpuMs / requests).toFixed(3)),
        intake: Number((intakeCpuMs / requests).toFixed(3)),
        /** Intake plus the job each notification makes (re-read of an Encounter the server does not have). */
        serviceWithJobs: Number((serviceCpuMs / ratedRequests).toFixed(3)),
        cpuRatio: Number((bareCpuMs / intakeCpuMs).toFixed(2)),
      },
      atFixedRate: {
        rate,
        seconds: rateSeconds,
        intake: {
          p50Ms: intakeAtRate.p50Ms,
          p99Ms: intakeAtRate.p99Ms,
          maxMs: intakeAtRate.maxMs,
          errors: intakeAtRate.errors,
        },
        serviceWithWorkers: {
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
      residentMegabytes: {
        service: { idle: idleMegabytes, underLoad: peakMegabytes },
        intakeOnly: { idle: intakeIdleMegabytes, underLoad: intakePeakMegabytes },
      },
      targets: {
        throughputRatioAtLeast: 0.5,
        p99AtRateMsAtMost: 20,
        residentMegabytesBelow: 250,
        met: throughputRatio >= 0.5 && intakeAtRate.p99Ms <= 20 && peakMegabytes < 250,
      },
    };
  } finally {
    for (const child of children) child.kill('SIGTERM');
  }
}

if (import.meta.main) console.log(JSON.stringify(await run(), null, 2));
