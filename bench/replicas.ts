import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdirSync, readFileSync } from 'node:fs';
import { loadavg } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Replicas sharing work through PostgreSQL (issue 17, benchmark), all on this machine:
 * 1. Drafts per second with 1, 2 and 3 service replicas on one PostgreSQL queue (pg-boss), each with the
 *    default two workers and the extractive engine, against a FHIR server in its own process (the sandbox
 *    EHR's engine, seeded with synthetic patients and their notes). Each run has a fresh database and a fresh
 *    FHIR server; the same events (finished encounters) are notified, spread over the replicas, and the clock
 *    stops when the queue has settled every job. Every draft is then counted on the FHIR server.
 * 2. The p99 acknowledgement of notifications at a fixed 500/s (open loop) by intake-only replicas
 *    (queue.concurrency 0, each notification recorded in PostgreSQL before the 200), one and two of them,
 *    against a bare express endpoint that only parses the JSON, in the same run.
 * The machine has two cores: replicas, the FHIR server, PostgreSQL and the load generator share them, so
 * CPU per draft and the machine's busy share are reported beside the rates.
 */
const directory = path.dirname(fileURLToPath(import.meta.url));
const secret = 'bench-notify-secret-0123456789';
const patientCount = 24;
const seed = 20261127;
const replicaCounts = [1, 2, 3];
const workersPerReplica = 2;
const warmUpEvents = 12;
const measuredEvents = 240;
const rate = 500;
const rateSeconds = 10;
const postgres = {
  host: process.env.PGHOST ?? '127.0.0.1',
  port: process.env.PGPORT ?? '5432',
  user: process.env.PGUSER ?? 'postgres',
};

function psql(sql: string): void {
  execFileSync(
    'psql',
    ['-h', postgres.host, '-p', postgres.port, '-U', postgres.user, '-d', 'postgres', '-qtAc', sql],
    {
      stdio: ['ignore', 'ignore', 'pipe'],
      timeout: 30_000,
    },
  );
}

/** A database of the bench's own, dropped after. */
function createDatabase(): { name: string; url: string; drop(): void } {
  const name = `bench_replicas_${randomBytes(6).toString('hex')}`;
  psql(`create database ${name}`);
  return {
    name,
    url: `postgres://${postgres.user}@${postgres.host}:${postgres.port}/${name}`,
    drop: () => psql(`drop database if exists ${name} with (force)`),
  };
}

interface Started {
  child: ChildProcess;
  lines: string[];
}

/**
 * Starts a process, lists it in `children` at once (so a failed start elsewhere still stops it), and resolves
 * with the first `lineCount` lines it prints.
 */
function startProcess(
  children: ChildProcess[],
  script: string,
  args: string[],
  lineCount = 1,
): Promise<Started> {
  const child = spawn(process.execPath, [path.join(directory, script), ...args], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  children.push(child);
  return new Promise((resolve, reject) => {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      if (lines.length > lineCount)
        resolve({ child, lines: lines.slice(0, lineCount).map((line) => line.trim()) });
    });
    child.once('exit', (code) => reject(new Error(`${script} ${args[0]} exited with ${code}`)));
  });
}

function stop(child: ChildProcess): Promise<void> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve();
  return new Promise((resolve) => {
    const timer = setTimeout(() => child.kill('SIGKILL'), 35_000);
    child.once('exit', () => {
      clearTimeout(timer);
      resolve();
    });
    child.kill('SIGTERM');
  });
}

/** CPU time (user + system) a process has used, in ms. */
function cpuMilliseconds(pid: number | undefined): number {
  const fields = readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
  return ((Number(fields[11]) + Number(fields[12])) * 1000) / 100;
}

/**
 * CPU time the PostgreSQL backends serving one database (their process title names it) use from now on, in ms:
 * the database's share of the work, apart from other databases on the same server. Backends come and go (pools
 * close idle connections), so they are sampled every 100 ms and each one's time is kept after it ends.
 */
function databaseCpuMeter(database: string): { stop(): number } {
  const backends = new Map<number, { first: number; last: number }>();
  // Processes seen not to be one of its backends are not read again (keeps the sampling cheap).
  const others = new Set<string>();
  const sample = (initial: boolean) => {
    for (const entry of readdirSync('/proc')) {
      if (!/^\d+$/.test(entry) || others.has(entry)) continue;
      try {
        const pid = Number(entry);
        if (!backends.has(pid)) {
          const title = readFileSync(`/proc/${entry}/cmdline`, 'utf8');
          if (!title.startsWith('postgres:') || !title.includes(` ${database} `)) {
            // A new backend shows the title `postgres: ... startup` for a moment; look at it again.
            if (!title.startsWith('postgres:')) others.add(entry);
            continue;
          }
        }
        const now = cpuMilliseconds(pid);
        const known = backends.get(pid);
        if (known) known.last = now;
        // A backend that starts while measuring counts from zero.
        else backends.set(pid, { first: initial ? now : 0, last: now });
      } catch {
        // The process ended while being read.
      }
    }
  };
  sample(true);
  const timer = setInterval(() => sample(false), 100);
  return {
    stop() {
      clearInterval(timer);
      sample(false);
      let total = 0;
      for (const { first, last } of backends.values()) total += last - first;
      return total;
    },
  };
}

/** The machine's busy and total CPU time so far (all cores, in clock ticks). */
function machineTicks(): { busy: number; total: number } {
  const [, ...values] = readFileSync('/proc/stat', 'utf8').split('\n')[0].trim().split(/\s+/);
  const ticks = values.map(Number);
  const total = ticks.reduce((sum, value) => sum + value, 0);
  // idle and iowait are the fourth and fifth fields.
  return { busy: total - ticks[3] - ticks[4], total };
}

function notification(encounterId: string, number: number): string {
  return JSON.stringify({
    resourceType: 'Bundle',
    type: 'history',
    timestamp: '2026-11-27T10:00:00Z',
    entry: [
      {
        fullUrl: `urn:uuid:${randomBytes(16)
          .toString('hex')
          .replace(/^(.{8})(.{4})(.{4})(.{4})/, '$1-$2-$3-$4-')}`,
        resource: {
          resourceType: 'Parameters',
          parameter: [
            { name: 'subscription', valueReference: { reference: 'Subscription/bench-replicas' } },
            { name: 'topic', valueCanonical: 'http://hl7.org/SubscriptionTopic/encounter-change' },
            { name: 'status', valueCode: 'active' },
            { name: 'type', valueCode: 'event-notification' },
            { name: 'events-since-subscription-start', valueString: String(number) },
            {
              name: 'notification-event',
              part: [
                { name: 'event-number', valueString: String(number) },
                { name: 'timestamp', valueInstant: '2026-11-27T10:00:00Z' },
                { name: 'focus', valueReference: { reference: `Encounter/${encounterId}` } },
              ],
            },
          ],
        },
      },
    ],
  });
}

const headers = { 'content-type': 'application/fhir+json', authorization: `Bearer ${secret}` };

/**
 * Starts `count` replicas on one database: the first alone (it creates the queue's schema, as the first pod of a
 * rollout does), then the others together.
 */
async function startReplicas(
  children: ChildProcess[],
  count: number,
  fhirBaseUrl: string,
  databaseUrl: string,
  workers: number,
): Promise<Started[]> {
  const args = ['service', fhirBaseUrl, databaseUrl, secret, String(workers)];
  const first = await startProcess(children, 'replicas.support.ts', args);
  const others = await Promise.all(
    Array.from({ length: count - 1 }, () => startProcess(children, 'replicas.support.ts', args)),
  );
  return [first, ...others];
}

/** Notifies each encounter once, spread over the replicas in turn, a few at a time; returns the refusals. */
async function notifyAll(urls: string[], encounterIds: string[], firstNumber: number): Promise<number> {
  let next = 0;
  let refused = 0;
  await Promise.all(
    Array.from({ length: 8 }, async () => {
      while (next < encounterIds.length) {
        const index = next++;
        const response = await fetch(`${urls[index % urls.length]}/notify`, {
          method: 'POST',
          headers,
          body: notification(encounterIds[index], firstNumber + index),
        });
        await response.arrayBuffer();
        if (response.status !== 200) refused++;
      }
    }),
  );
  return refused;
}

interface QueueCounts {
  pending: number;
  running: number;
  done: number;
  failed: number;
}

/** Waits until the shared queue has settled `expected` jobs (done or failed); any replica reads the same counts. */
async function waitForSettled(url: string, expected: number, timeoutMs = 600_000): Promise<QueueCounts> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    // The counts are operator detail: the admin secret (the notify secret, as no other is set).
    const readiness = (await (
      await fetch(`${url}/readyz`, { headers: { authorization: `Bearer ${secret}` } })
    ).json()) as { queue?: QueueCounts };
    const queue = readiness.queue;
    if (queue && queue.done + queue.failed >= expected && queue.pending + queue.running === 0) return queue;
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
  throw new Error(`the queue did not settle ${expected} jobs within ${timeoutMs / 1000} s`);
}

/** Drafts the service wrote (its identifier system), counted on the FHIR server. */
async function draftsOnServer(fhirBaseUrl: string): Promise<number> {
  const response = await fetch(
    `${fhirBaseUrl}/DocumentReference?identifier=${encodeURIComponent('urn:ehr-draft-agent:draft|')}&_summary=count`,
    { headers: { accept: 'application/fhir+json' } },
  );
  const bundle = (await response.json()) as { total?: number };
  if (typeof bundle.total !== 'number') throw new Error(`draft count: ${response.status}, no total`);
  return bundle.total;
}

async function draftsWithReplicas(replicas: number, now: string): Promise<Record<string, unknown>> {
  const database = createDatabase();
  const children: ChildProcess[] = [];
  try {
    const fhir = await startProcess(
      children,
      'replicas.support.ts',
      ['fhir', String(patientCount), String(seed), now],
      2,
    );
    const [fhirBaseUrl, encounterLine] = fhir.lines;
    const encounters = JSON.parse(encounterLine) as string[];
    if (encounters.length < warmUpEvents + measuredEvents)
      throw new Error(`only ${encounters.length} finished encounters`);
    const started = await startReplicas(children, replicas, fhirBaseUrl, database.url, workersPerReplica);
    const urls = started.map((replica) => replica.lines[0]);

    // Warm-up (JIT, pools, pg-boss's first claims), not measured.
    await notifyAll(urls, encounters.slice(0, warmUpEvents), 1);
    await waitForSettled(urls[0], warmUpEvents);

    const measured = encounters.slice(warmUpEvents, warmUpEvents + measuredEvents);
    const pids = started.map((replica) => replica.child.pid);
    const replicaCpuBefore = pids.map(cpuMilliseconds);
    const fhirCpuBefore = cpuMilliseconds(fhir.child.pid);
    const databaseCpu = databaseCpuMeter(database.name);
    const loadAverageAtStart = Number(loadavg()[0].toFixed(1));
    const machineBefore = machineTicks();
    const startedAt = performance.now();
    const refused = await notifyAll(urls, measured, warmUpEvents + 1);
    const counts = await waitForSettled(urls[0], warmUpEvents + measured.length);
    const seconds = (performance.now() - startedAt) / 1000;
    const machineAfter = machineTicks();
    const replicaCpuMs = pids.map((pid, index) => cpuMilliseconds(pid) - replicaCpuBefore[index]);
    const fhirCpuMs = cpuMilliseconds(fhir.child.pid) - fhirCpuBefore;
    const databaseCpuMs = databaseCpu.stop();
    const drafts = await draftsOnServer(fhirBaseUrl);
    // Jobs that ended without a draft (skipped, failed) would make the rate meaningless.
    if (drafts !== warmUpEvents + measured.length)
      throw new Error(`${drafts} drafts on the FHIR server for ${warmUpEvents + measured.length} events`);
    const serviceCpuMs = replicaCpuMs.reduce((sum, value) => sum + value, 0);
    return {
      replicas,
      workers: replicas * workersPerReplica,
      events: measured.length,
      refused,
      seconds: Number(seconds.toFixed(2)),
      draftsPerSecond: Number((measured.length / seconds).toFixed(1)),
      jobsFailed: counts.failed,
      /** Drafts on the FHIR server after the run: warm-up and measured events, one each. */
      draftsOnServer: drafts,
      draftsExpected: warmUpEvents + measured.length,
      cpuMsPerDraft: {
        replicas: Number((serviceCpuMs / measured.length).toFixed(1)),
        fhirServer: Number((fhirCpuMs / measured.length).toFixed(1)),
        postgres: Number((databaseCpuMs / measured.length).toFixed(1)),
      },
      /** Cores the replicas, the FHIR server and the database's backends used on average (of 2). */
      coresUsed: Number(((serviceCpuMs + fhirCpuMs + databaseCpuMs) / 1000 / seconds).toFixed(2)),
      loadAverageAtStart,
      /** How the work fell on each replica (share of the service CPU). */
      replicaCpuShare: replicaCpuMs.map((value) => Number((value / serviceCpuMs).toFixed(2))),
      machineBusyShare: Number(
        ((machineAfter.busy - machineBefore.busy) / (machineAfter.total - machineBefore.total)).toFixed(2),
      ),
    };
  } finally {
    await Promise.all(children.reverse().map(stop));
    database.drop();
  }
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

function load(spec: Record<string, unknown>): Promise<LoadResult> {
  const child = spawn(
    process.execPath,
    [path.join(directory, 'intake-load.support.ts'), JSON.stringify(spec)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  return new Promise((resolve, reject) => {
    let output = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      output += chunk.toString();
    });
    child.once('exit', (code) => {
      if (code === 0) resolve(JSON.parse(output) as LoadResult);
      else reject(new Error(`load generator exited with ${code}`));
    });
  });
}

/** An id-only event notification for load; `{n}` makes each a new event for a new encounter. */
const loadBody = notification('bench-{n}', 0).replaceAll('"0"', '"{n}"');

async function acknowledgementAtRate(fhirBaseUrl: string): Promise<Record<string, unknown>> {
  const database = createDatabase();
  const children: ChildProcess[] = [];
  try {
    const bare = await startProcess(children, 'intake-servers.support.ts', ['bare']);
    const intake = await startReplicas(children, 2, fhirBaseUrl, database.url, 0);
    const intakeUrls = intake.map((replica) => `${replica.lines[0]}/notify`);
    const bareUrl = `${bare.lines[0]}/notify`;
    const atRate = { headers, body: loadBody, rate, seconds: rateSeconds, concurrency: 256 };
    let offset = 1;
    // Warm-up of each endpoint, not measured.
    await load({ url: bareUrl, headers, body: loadBody, requests: 2_000, concurrency: 16 });
    await load({
      url: intakeUrls[0],
      urls: intakeUrls,
      headers,
      body: loadBody,
      requests: 2_000,
      concurrency: 16,
      offset,
    });
    offset += 2_000;
    // An open-loop run that the endpoint cannot keep up with ends late: its backlog is the latency.
    const summary = (result: LoadResult) => ({
      p50Ms: result.p50Ms,
      p99Ms: result.p99Ms,
      maxMs: result.maxMs,
      errors: result.errors,
      kept500PerSecond: result.seconds <= rateSeconds * 1.05,
    });
    const bareResult = await load({ ...atRate, url: bareUrl });
    const oneReplica = await load({ ...atRate, url: intakeUrls[0], offset });
    offset += rate * rateSeconds;
    const twoReplicas = await load({ ...atRate, url: intakeUrls[0], urls: intakeUrls, offset });
    offset += rate * rateSeconds;

    // As fast as each answers (bounded count): the rate each can sustain here, and what a notification costs.
    const requests = 3_000;
    const bareMax = await load({ url: bareUrl, headers, body: loadBody, requests, concurrency: 64 });
    const pids = intake.map((replica) => replica.child.pid);
    const replicaCpuBefore = pids.map(cpuMilliseconds);
    const databaseCpu = databaseCpuMeter(database.name);
    const intakeMax = await load({
      url: intakeUrls[0],
      urls: intakeUrls,
      headers,
      body: loadBody,
      requests,
      concurrency: 64,
      offset,
    });
    const replicaCpuMs = pids.reduce<number>(
      (sum, pid, index) => sum + cpuMilliseconds(pid) - replicaCpuBefore[index],
      0,
    );
    const databaseCpuMs = databaseCpu.stop();
    return {
      rate,
      seconds: rateSeconds,
      loadAverageAtEnd: Number(loadavg()[0].toFixed(1)),
      bare: summary(bareResult),
      intakeOnly: { oneReplica: summary(oneReplica), twoReplicas: summary(twoReplicas) },
      p99RatioToBare: {
        oneReplica: Number((oneReplica.p99Ms / bareResult.p99Ms).toFixed(1)),
        twoReplicas: Number((twoReplicas.p99Ms / bareResult.p99Ms).toFixed(1)),
      },
      closedLoop: {
        requests,
        concurrency: 64,
        barePerSecond: bareMax.perSecond,
        twoIntakeOnlyReplicasPerSecond: intakeMax.perSecond,
        cpuMsPerNotification: {
          replicas: Number((replicaCpuMs / requests).toFixed(2)),
          postgres: Number((databaseCpuMs / requests).toFixed(2)),
        },
      },
    };
  } finally {
    await Promise.all(children.reverse().map(stop));
    database.drop();
  }
}

export async function run(): Promise<Record<string, unknown>> {
  try {
    psql('select 1');
  } catch {
    throw new Error(`PostgreSQL at ${postgres.host}:${postgres.port} as ${postgres.user} does not answer`);
  }
  // One reference date for every FHIR server of the run, so each holds the same patients.
  const now = new Date(Date.UTC(2026, 10, 27)).toISOString();
  // A part that fails is reported with its error; the others' figures still print.
  const attempt = async (work: () => Promise<Record<string, unknown>>) =>
    work().catch((error: unknown) => ({ error: error instanceof Error ? error.message : String(error) }));
  const runs: Record<string, unknown>[] = [];
  for (const replicas of replicaCounts) {
    process.stderr.write(`bench: replicas: ${replicas} replica(s)...\n`);
    runs.push({ replicas, ...(await attempt(() => draftsWithReplicas(replicas, now))) });
  }
  const single = runs[0].draftsPerSecond as number | undefined;
  process.stderr.write('bench: replicas: intake-only acknowledgement at 500/s...\n');
  const acknowledgement = await attempt(async () => {
    const fhirChildren: ChildProcess[] = [];
    try {
      const fhir = await startProcess(
        fhirChildren,
        'replicas.support.ts',
        ['fhir', '1', String(seed), now],
        2,
      );
      return await acknowledgementAtRate(fhir.lines[0]);
    } finally {
      await Promise.all(fhirChildren.map(stop));
    }
  });
  return {
    patients: patientCount,
    workersPerReplica,
    engine: 'extractive',
    loadAverageAtEnd: Number(loadavg()[0].toFixed(1)),
    drafts: runs,
    /** Rate with n replicas over the rate with one: what adding replicas gains on this machine. */
    speedupOverOneReplica: Object.fromEntries(
      runs.map((result) => [
        String(result.replicas),
        single && typeof result.draftsPerSecond === 'number'
          ? Number((result.draftsPerSecond / single).toFixed(2))
          : null,
      ]),
    ),
    acknowledgementAtFixedRate: acknowledgement,
  };
}

if (import.meta.main) console.log(JSON.stringify(await run(), null, 2));
