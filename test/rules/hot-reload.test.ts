import { execFileSync } from 'node:child_process';
import { readFileSync, renameSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { Writable } from 'node:stream';
import { afterEach, describe, expect, it } from 'vitest';
import { createLogger } from '../../src/log.ts';
import { createRuleSetHolder, type RuleSetHolder } from '../../src/rules/rule-set-watcher.ts';
import { copyOfStarterRules } from './helpers.ts';

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

async function waitFor(check: () => boolean, timeoutMs = 10_000) {
  const started = Date.now();
  while (!check()) {
    if (Date.now() - started > timeoutMs) throw new Error('timed out waiting');
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

let holder: RuleSetHolder | undefined;
afterEach(() => holder?.close());

describe('rule set hot reload', () => {
  it('refuses an invalid set on file change, keeps serving the last valid one and logs why', async () => {
    const source = copyOfStarterRules();
    const { logger, lines } = capturingLogger();
    const refusals: unknown[] = [];
    const reloads: string[] = [];
    holder = await createRuleSetHolder(source, {
      logger,
      debounceMs: 50,
      onRefused: (errors) => refusals.push(errors),
      onReload: (ruleSet) => reloads.push(ruleSet.fingerprint),
    });
    const original = holder.current();
    const file = path.join(source.directory, 'diabetes-statin.yaml');
    const text = readFileSync(file, 'utf8');

    writeFileSync(file, text.replace('severity: warning', 'severity: loud'));
    await waitFor(() => refusals.length > 0);
    expect(holder.current()).toBe(original);
    expect(holder.current().rules.map((rule) => rule.document.id)).toContain('diabetes-statin');
    const refused = lines.find((line) => line.msg === 'rule set refused; the last valid set keeps serving');
    expect(refused).toBeDefined();
    expect(String((refused?.errors as string[] | undefined)?.[0])).toMatch(/diabetes-statin\.yaml:\d+/);

    writeFileSync(
      file,
      text.replace('title: No statin for a patient', 'title: No statin at all for a patient'),
    );
    await waitFor(() => reloads.length > 0);
    expect(holder.current()).not.toBe(original);
    expect(holder.current().fingerprint).not.toBe(original.fingerprint);
    const statin = holder.current().rules.find((rule) => rule.document.id === 'diabetes-statin');
    expect(statin?.document.title).toContain('No statin at all');
  });

  it('sees every edit however it is made: sed -i, in-place writes after it, mv over the file, with rescans off', async () => {
    const source = copyOfStarterRules();
    const { logger, lines } = capturingLogger();
    const refusals: unknown[] = [];
    holder = await createRuleSetHolder(source, {
      logger,
      debounceMs: 50,
      // No rescan: the folder watch alone must see each of these.
      rescanIntervalMs: 0,
      onRefused: (errors) => refusals.push(errors),
    });
    const file = path.join(source.directory, 'diabetes-statin.yaml');
    const title = () =>
      holder?.current().rules.find((rule) => rule.document.id === 'diabetes-statin')?.document.title;

    // sed -i writes a temporary file and renames it over the rule: a new inode.
    execFileSync('sed', ['-i', 's/title: No statin for a patient/title: No statin (A) for a patient/', file]);
    await waitFor(() => title()?.includes('(A)') === true);
    for (const mark of ['B', 'C', 'D']) {
      writeFileSync(file, readFileSync(file, 'utf8').replace(/No statin \(\w\)/, `No statin (${mark})`));
      await waitFor(() => title()?.includes(`(${mark})`) === true);
    }
    const replacement = path.join(source.directory, 'statin.tmp');
    writeFileSync(replacement, readFileSync(file, 'utf8').replace('No statin (D)', 'No statin (E)'));
    renameSync(replacement, file);
    await waitFor(() => title()?.includes('(E)') === true);

    // An invalid edit made the same way is refused, and the last valid set keeps serving.
    execFileSync('sed', ['-i', 's/severity: warning/severity: loud/', file]);
    await waitFor(() => refusals.length > 0);
    expect(title()).toContain('(E)');

    // One log line per reload, with the fingerprint and every rule's version.
    const reloaded = lines.filter((line) => line.msg === 'rule set reloaded');
    expect(reloaded.length).toBeGreaterThanOrEqual(5);
    const last = reloaded.at(-1) as { fingerprint?: string; versions?: Record<string, string> };
    expect(last.fingerprint).toBe(holder.current().fingerprint);
    expect(last.versions?.['diabetes-statin']).toBe('1.0.0');
    expect(Object.keys(last.versions ?? {})).toHaveLength(holder.current().rules.length);
  });

  it('rescans the content periodically, so a change no event reported is still picked up', async () => {
    const source = copyOfStarterRules();
    const reloads: string[] = [];
    holder = await createRuleSetHolder(source, {
      logger: capturingLogger().logger,
      // No events at all: only the safety net can see the change.
      watch: false,
      rescanIntervalMs: 100,
      onReload: (ruleSet) => reloads.push(ruleSet.fingerprint),
    });
    const file = path.join(source.directory, 'diabetes-statin.yaml');
    writeFileSync(file, readFileSync(file, 'utf8').replace('version: 1.0.0', 'version: 1.0.1'));
    await waitFor(() => reloads.length > 0);
    expect(
      holder.current().rules.find((rule) => rule.document.id === 'diabetes-statin')?.document.version,
    ).toBe('1.0.1');
    // Unchanged content is not reloaded again.
    await new Promise((resolve) => setTimeout(resolve, 400));
    expect(reloads).toHaveLength(1);
  });

  it('will not start on an invalid set', async () => {
    const source = copyOfStarterRules();
    writeFileSync(path.join(source.directory, 'broken.yaml'), 'id: [');
    await expect(
      createRuleSetHolder(source, { logger: capturingLogger().logger, watch: false }),
    ).rejects.toThrow(/broken\.yaml:\d+/);
  });

  it('reload() on demand reports the refusal to the caller', async () => {
    const source = copyOfStarterRules();
    holder = await createRuleSetHolder(source, { logger: capturingLogger().logger, watch: false });
    writeFileSync(path.join(source.directory, 'extra.yaml'), 'id: extra\nunknown: 1\n');
    const result = await holder.reload();
    expect(result.ok).toBe(false);
    if (!result.ok) expect(result.errors.some((error) => error.file.endsWith('extra.yaml'))).toBe(true);
  });
});
