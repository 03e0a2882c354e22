import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { nextDelayMs } from '../../src/queue/job-queue.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';

const policy = { maxAttempts: 3, backoffBaseMs: 1_000, backoffMaxMs: 60_000, leaseMs: 30_000 };

function queueWithClock() {
  let now = Date.parse('2026-11-27T10:00:00Z');
  const file = path.join(mkdtempSync(path.join(tmpdir(), 'queue-test-')), 'queue.sqlite');
  const queue = new SqliteJobQueue(file, policy, () => now);
  return { queue, file, advance: (milliseconds: number) => (now += milliseconds) };
}

describe('SQLite job queue', () => {
  it('collapses duplicate events for an encounter that already has a waiting job', async () => {
    const { queue } = queueWithClock();
    expect(
      await queue.enqueue([
        { encounterId: 'e1', source: 'test' },
        { encounterId: 'e1', source: 'test' },
      ]),
    ).toEqual({ added: 1 });
    expect(await queue.enqueue([{ encounterId: 'e1', source: 'test' }])).toEqual({ added: 0 });
    expect(await queue.enqueue([{ encounterId: 'e1', source: 'cds', kind: 'previsit-briefing' }])).toEqual({
      added: 1,
    });
    // Once the first job runs, a new event for the same encounter is queued again (it may carry a newer version).
    const claimed = await queue.claim('w1');
    expect(claimed?.encounterId).toBe('e1');
    expect(await queue.enqueue([{ encounterId: 'e1', source: 'test' }])).toEqual({ added: 1 });
  });

  it('survives a reopen: nothing queued is lost', async () => {
    const { queue, file } = queueWithClock();
    await queue.enqueue([
      { encounterId: 'e1', source: 'test' },
      { encounterId: 'e2', source: 'test' },
    ]);
    await queue.close();
    const reopened = new SqliteJobQueue(file, policy);
    expect((await reopened.counts()).pending).toBe(2);
    await reopened.close();
  });

  it('hands a job out again when its worker lost the lease', async () => {
    const { queue, advance } = queueWithClock();
    await queue.enqueue([{ encounterId: 'e1', source: 'test' }]);
    const first = await queue.claim('crashed-worker');
    expect(await queue.claim('w2')).toBeUndefined();
    advance(policy.leaseMs + 1);
    const second = await queue.claim('w2');
    expect(second?.id).toBe(first?.id);
    expect(second?.attempts).toBe(2);
  });

  it('retries with backoff, then dead-letters, and a dead letter can be retried', async () => {
    const { queue, advance } = queueWithClock();
    await queue.enqueue([{ encounterId: 'e1', source: 'test' }]);
    const job = await queue.claim('w1');
    expect(await queue.fail(job!.id, 'HTTP 503', { retryable: true, retryAfterMs: 20_000 })).toBe('pending');
    expect(await queue.claim('w1')).toBeUndefined(); // not due yet: Retry-After honoured
    advance(20_000);
    await queue.claim('w1');
    expect(await queue.fail(job!.id, 'HTTP 503', { retryable: true })).toBe('pending');
    advance(policy.backoffMaxMs);
    await queue.claim('w1');
    expect(await queue.fail(job!.id, 'HTTP 503', { retryable: true })).toBe('failed');
    const [deadLetter] = await queue.list('failed');
    expect(deadLetter).toMatchObject({ id: job!.id, lastError: 'HTTP 503', attempts: 3 });
    expect(await queue.retry(job!.id)).toBe(true);
    expect((await queue.claim('w1'))?.id).toBe(job!.id);
  });

  it('dead-letters a non-retryable failure at once', async () => {
    const { queue } = queueWithClock();
    await queue.enqueue([{ encounterId: 'e1', source: 'test' }]);
    const job = await queue.claim('w1');
    expect(await queue.fail(job!.id, 'HTTP 422', { retryable: false })).toBe('failed');
  });

  it('computes exponential backoff with jitter, capped, never below Retry-After', () => {
    expect(nextDelayMs(policy, 1, 0, () => 0)).toBe(500);
    expect(nextDelayMs(policy, 3, 0, () => 1)).toBe(4_000);
    expect(nextDelayMs(policy, 30, 0, () => 1)).toBe(60_000);
    expect(nextDelayMs(policy, 1, 45_000, () => 0)).toBe(45_000);
  });
});

describe('regeneration requests', () => {
  it('stay jobs of their own beside a waiting event job, and collapse with each other', async () => {
    const { queue } = queueWithClock();
    await queue.enqueue([{ encounterId: 'e1', source: 'cds-hooks', kind: 'progress-summary' }]);
    expect(
      await queue.enqueue([{ encounterId: 'e1', source: 'regenerate', kind: 'progress-summary' }]),
    ).toEqual({ added: 1 });
    expect(
      await queue.enqueue([{ encounterId: 'e1', source: 'regenerate', kind: 'progress-summary' }]),
    ).toEqual({ added: 0 });
    expect((await queue.counts()).pending).toBe(2);
  });
});
