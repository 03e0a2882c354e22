import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import { afterEach, describe, expect, it } from 'vitest';
import { createJobsProgram } from '../../src/cli/jobs.ts';
import { createSubscriptionProgram } from '../../src/cli/subscription.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import { startFhirStandIn } from '../support/fhir-stand-in.ts';
import { notifySecret, testConfig } from '../support/intake-harness.ts';
import { repoRoot } from '../support/shared-fixtures.ts';

/** The operator commands: dead-letter list and retry (`jobs`), and the Subscription (`subscription`). */
const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function capture() {
  const output = { out: '', err: '' };
  return {
    output,
    io: { out: (text: string) => (output.out += text), err: (text: string) => (output.err += text) },
  };
}

describe('jobs command', () => {
  it('lists the dead-letter list and retries from it', async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'cli-'));
    cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
    const config = testConfig('http://127.0.0.1:9/fhir', dataDir);
    const queue = new SqliteJobQueue(path.join(dataDir, 'queue.sqlite'), config.queue);
    cleanups.push(() => queue.close());
    await queue.enqueue([{ encounterId: 'broken', source: 'test' }]);
    const job = await queue.claim('w');
    await queue.fail(job?.id as string, 'HTTP 422 from the server', { retryable: false });

    // As a separate process, the way an operator runs it.
    const { stdout } = await promisify(execFile)(
      process.execPath,
      [path.join(repoRoot, 'src/cli/jobs.ts'), 'list', '--json'],
      {
        env: { ...process.env, DATA_DIR: dataDir, EHR_AGENT_CONFIG: '' },
        cwd: dataDir,
      },
    );
    const listed = JSON.parse(stdout) as { id: string; lastError: string }[];
    expect(listed.map((entry) => entry.id)).toEqual([job?.id]);
    expect(listed[0].lastError).toContain('422');

    const { output, io } = capture();
    await createJobsProgram({ io, config: () => config }).parseAsync(['retry', '--all'], { from: 'user' });
    expect(output.out).toContain('retried 1 job(s)');
    expect((await queue.counts()).pending).toBe(1);
    const again = capture();
    await createJobsProgram({ io: again.io, config: () => config }).parseAsync(['counts'], { from: 'user' });
    expect(JSON.parse(again.output.out)).toMatchObject({ pending: 1, failed: 0 });
  });
});

describe('subscription command', () => {
  it('check fails while missing, ensure creates, list shows, recreate replaces', async () => {
    const standIn = await startFhirStandIn();
    const dataDir = mkdtempSync(path.join(tmpdir(), 'cli-'));
    cleanups.push(
      () => standIn.close(),
      () => rmSync(dataDir, { recursive: true, force: true }),
    );
    const config = { ...testConfig(standIn.url, dataDir), publicUrl: 'http://agent.example' };
    const run = async (...args: string[]) => {
      const { output, io } = capture();
      process.exitCode = 0;
      await createSubscriptionProgram({ io, config: () => config }).parseAsync(args, { from: 'user' });
      const exitCode = process.exitCode;
      process.exitCode = 0;
      return { ...output, exitCode };
    };
    expect((await run('check')).exitCode).toBe(1);
    expect((await run('ensure')).out).toMatch(/^created\t/);
    // Created `requested`: not usable until the server confirms it (see subscription-confirmation.test.ts).
    expect((await run('check')).exitCode).toBe(1);
    const [ensured] = standIn.all('Subscription');
    standIn.write({ ...ensured, status: 'active' });
    const checked = await run('check');
    expect(checked.exitCode).toBe(0);
    expect(checked.out).toContain('http://agent.example/notify');
    expect((await run('recreate')).out).toMatch(/^recreated\t/);
    expect((await run('list')).out.trim().split('\n')).toHaveLength(2);
    const created = standIn.all('Subscription') as { status?: string; channel?: { header?: string[] } }[];
    expect(created.map((subscription) => subscription.status).sort()).toEqual(['off', 'requested']);
    expect(
      created.every(
        (subscription) => subscription.channel?.header?.[0] === `Authorization: Bearer ${notifySecret}`,
      ),
    ).toBe(true);
  });
});
