import { readFileSync, writeFileSync } from 'node:fs';
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
