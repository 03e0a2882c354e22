import { Agent, request } from 'node:http';

/**
 * The load generator for bench/intake.ts, in its own process so it does not share an event loop
 * with the servers it measures. Input (argv[2], JSON): url, headers, body template (`{n}` replaced by
 * the request number), and either { requests, concurrency } (as fast as possible, bounded count) or
 * { rate, seconds } (open loop: request i is due at i/rate s, latency counted from when it was due).
 * Output (stdout, JSON): count, errors, seconds, perSecond, p50Ms, p99Ms, maxMs.
 */
interface LoadSpec {
  url: string;
  /** Several endpoints (replicas): request i goes to urls[i % urls.length]; `url` is then unused. */
  urls?: string[];
  headers: Record<string, string>;
  body: string;
  requests?: number;
  concurrency?: number;
  rate?: number;
  seconds?: number;
  /** Added to each request number, so several runs against one subscription keep counting up. */
  offset?: number;
}

const spec = JSON.parse(process.argv[2] as string) as LoadSpec;
const targets = (spec.urls ?? [spec.url]).map((url) => new URL(url));
const agent = new Agent({ keepAlive: true, maxSockets: spec.concurrency ?? 256 });

function send(number: number): Promise<number> {
  const body = Buffer.from(spec.body.replaceAll('{n}', String(number + (spec.offset ?? 0))));
  const target = targets[number % targets.length];
  return new Promise((resolve) => {
    const outgoing = request(
      {
        agent,
        hostname: target.hostname,
        port: target.port,
        path: target.pathname,
        method: 'POST',
        headers: { ...spec.headers, 'content-length': body.length },
      },
      (response) => {
        response.resume();
        response.on('end', () => resolve(response.statusCode ?? 0));
      },
    );
    outgoing.on('error', () => resolve(0));
    outgoing.end(body);
  });
}

const percentile = (sorted: number[], share: number) =>
  sorted.length === 0 ? 0 : sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))];

const latencies: number[] = [];
let errors = 0;
const startedAt = performance.now();

if (spec.rate) {
  const total = Math.round(spec.rate * (spec.seconds ?? 10));
  const intervalMs = 1000 / spec.rate;
  const inFlight: Promise<void>[] = [];
  let next = 0;
  await new Promise<void>((resolve) => {
    const tick = () => {
      const elapsed = performance.now() - startedAt;
      while (next < total && next * intervalMs <= elapsed) {
        const dueAt = startedAt + next * intervalMs;
        const number = next++;
        inFlight.push(
          send(number).then((status) => {
            latencies.push(performance.now() - dueAt);
            if (status !== 200) errors++;
          }),
        );
      }
      if (next >= total) resolve();
      else setTimeout(tick, 1);
    };
    tick();
  });
  await Promise.all(inFlight);
} else {
  const total = spec.requests ?? 10_000;
  let next = 0;
  await Promise.all(
    Array.from({ length: spec.concurrency ?? 64 }, async () => {
      while (next < total) {
        const number = next++;
        const sentAt = performance.now();
        const status = await send(number);
        latencies.push(performance.now() - sentAt);
        if (status !== 200) errors++;
      }
    }),
  );
}

const seconds = (performance.now() - startedAt) / 1000;
latencies.sort((left, right) => left - right);
process.stdout.write(
  `${JSON.stringify({
    count: latencies.length,
    errors,
    seconds: Number(seconds.toFixed(2)),
    perSecond: Math.round(latencies.length / seconds),
    p50Ms: Number(percentile(latencies, 0.5).toFixed(2)),
    p99Ms: Number(percentile(latencies, 0.99).toFixed(2)),
    maxMs: Number((latencies.at(-1) ?? 0).toFixed(2)),
  })}\n`,
);
agent.destroy();
