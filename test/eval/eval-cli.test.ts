import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { repoRoot } from '../support/shared-fixtures.ts';

/**
 * `npm run eval` end to end, as a site runs it: a fresh process, the embedded sandbox, the report
 * files, and the exit code (a bad score passes; only --min-recall above the score fails).
 */
const directory = mkdtempSync(path.join(tmpdir(), 'eval-cli-'));

function runEval(args: string[]) {
  return spawnSync(process.execPath, [path.join(repoRoot, 'src/cli/eval.ts'), ...args], {
    cwd: repoRoot,
    encoding: 'utf8',
    timeout: 240_000,
  });
}

afterAll(() => {
  rmSync(directory, { recursive: true, force: true });
});

describe('npm run eval', () => {
  it('writes report.md, report.html and report.json with one entry per configuration', () => {
    const out = path.join(directory, 'side-by-side');
    const run = runEval(['--patients', '2', '--config', 'extractive', '--config', 'scripted', '--out', out]);
    expect(run.status, run.stderr).toBe(0);
    expect(run.stderr).toMatch(/eval: \d+\/\d+ drafts/);
    const report = JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8'));
    expect(report.configurations.map((entry: { name: string }) => entry.name)).toEqual([
      'extractive',
      'scripted',
    ]);
    for (const entry of report.configurations) {
      expect(entry.patients).toBe(2);
      expect(entry.factRecall.overall.value).toBeGreaterThan(0);
      expect(entry.factRecall.overall.low).toBeLessThanOrEqual(entry.factRecall.overall.value);
      expect(Object.keys(entry.factRecall.byCategory)).toEqual([
        'problem',
        'medication',
        'allergy',
        'result',
        'nudge',
        'planted',
      ]);
      expect(typeof entry.statementSupport.value).toBe('number');
      expect(entry.wrongPatientCitations).toBe(0);
      for (const key of ['promptTokens', 'completionTokens', 'modelCalls', 'secondsPerDraft'])
        expect(typeof entry[key].value).toBe('number');
    }
    const [extractive, scripted] = report.configurations;
    expect(extractive.modelCalls.value).toBe(0);
    expect(scripted.modelCalls.value).toBeGreaterThanOrEqual(2);
    expect(scripted.promptTokens.value).toBeGreaterThan(0);
    // The long-history patient (patient 0) is the benchmark's, measured for each configuration.
    expect(report.benchmark.map((entry: { notes: number }) => entry.notes)).toEqual([376, 376]);
    expect(report.benchmark[1].chunks).toBeGreaterThanOrEqual(1);
    const html = readFileSync(path.join(out, 'report.html'), 'utf8');
    expect(html).toContain('<svg');
    expect(html).not.toMatch(/<script|<link|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    const markdown = readFileSync(path.join(out, 'report.md'), 'utf8');
    expect(markdown).toContain('| extractive |');
    expect(markdown).toContain('| scripted |');
  }, 240_000);

  it('fails only when --min-recall is set above the score', () => {
    const out = path.join(directory, 'min-recall');
    const passing = runEval(['--patients', '1', '--min-recall', '0.1', '--out', out]);
    expect(passing.status, passing.stderr).toBe(0);
    const recall = JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8')).configurations[0]
      .factRecall.overall.value;
    expect(recall).toBeLessThan(1);
    const failing = runEval(['--patients', '1', '--min-recall', '1', '--out', out]);
    expect(failing.status).toBe(2);
    expect(failing.stderr).toContain('below --min-recall 1');
    expect(existsSync(path.join(out, 'report.json'))).toBe(true);
  }, 240_000);

  it('reports unwanted lines and notes per draft, and fails only when --max-unwanted is below the count', () => {
    const out = path.join(directory, 'max-unwanted');
    // Six sandbox patients: among them one whose medication says what it is for in words the policy withholds.
    const generous = runEval(['--patients', '6', '--max-unwanted', '1000', '--out', out]);
    expect(generous.status, generous.stderr).toBe(0);
    const [figures] = JSON.parse(readFileSync(path.join(out, 'report.json'), 'utf8')).configurations;
    expect(Object.keys(figures.unwantedLines)).toEqual([
      'afterEncounter',
      'socialAsProblem',
      'duplicates',
      'sensitiveAgainstPolicy',
      'total',
    ]);
    expect(figures.unwantedLines.afterEncounter).toBe(0);
    expect(figures.notesSummarisedPerDraft.value).toBeGreaterThan(0);
    expect(generous.stdout).toContain(`unwanted lines ${figures.unwantedLines.total}`);
    expect(readFileSync(path.join(out, 'report.md'), 'utf8')).toContain('## Unwanted lines (target 0)');
    const total: number = figures.unwantedLines.total;
    const atCount = runEval(['--patients', '6', '--max-unwanted', String(total), '--out', out]);
    expect(atCount.status, atCount.stderr).toBe(0);
    if (total > 0) {
      const below = runEval(['--patients', '6', '--max-unwanted', String(total - 1), '--out', out]);
      expect(below.status).toBe(2);
      expect(below.stderr).toContain(`unwanted lines above --max-unwanted ${total - 1}: extractive ${total}`);
    }
    const invalid = runEval(['--max-unwanted', '-1', '--out', path.join(directory, 'never')]);
    expect(invalid.status).not.toBe(0);
  }, 240_000);

  it('refuses an unknown configuration and an invalid threshold before reading anything', () => {
    const unknown = runEval(['--config', 'gpt-4', '--out', path.join(directory, 'never')]);
    expect(unknown.status).not.toBe(0);
    expect(unknown.stderr).toContain('unknown configuration');
    const threshold = runEval(['--min-recall', '1.5', '--out', path.join(directory, 'never')]);
    expect(threshold.status).not.toBe(0);
    expect(existsSync(path.join(directory, 'never'))).toBe(false);
  });
});
