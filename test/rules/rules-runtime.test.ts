import { mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { silentLogger } from '../../src/log.ts';
import { recordFromBundle } from '../../src/rules/record-from-bundle.ts';
import { rulesConfigSchema } from '../../src/rules/rules-config.ts';
import { createRulesRuntime } from '../../src/rules/rules-runtime.ts';
import { starterRulesDirectory } from './helpers.ts';

describe('rules runtime (what the composition root wires)', () => {
  it('evaluates for the pipeline, records deliveries and review outcomes in the sqlite store', async () => {
    const dataDirectory = mkdtempSync(path.join(tmpdir(), 'rules-data-'));
    const config = rulesConfigSchema.parse({ watch: false });
    expect(config.directory).toBe('config/rules');
    const runtime = await createRulesRuntime(config, { logger: silentLogger(), dataDirectory });
    try {
      const record = recordFromBundle(
        JSON.parse(readFileSync(path.join(starterRulesDirectory, 'fixtures', 'opioid-benzo.json'), 'utf8')),
      );
      const evaluation = await runtime.evaluate(record, {
        trigger: 'encounter-planned',
        now: new Date('2026-03-01'),
      });
      const nudge = evaluation.nudges.find((candidate) => candidate.ruleId === 'opioid-benzodiazepine');
      expect(nudge).toBeDefined();
      await runtime.recordReviewOutcome(nudge!.id, 'accepted');
      const statistics = await runtime.store.statistics();
      expect(statistics.find((row) => row.ruleId === 'opioid-benzodiazepine')).toMatchObject({
        fired: 1,
        accepted: 1,
      });
    } finally {
      await runtime.close();
    }
  });

  it('rejects unknown keys in its config section', () => {
    expect(rulesConfigSchema.safeParse({ perEncounterCapp: 3 }).success).toBe(false);
    // Without a configured URL the service links cards to its own SMART launch (<publicUrl>/smart/launch).
    expect(
      rulesConfigSchema.parse({ cdsHooks: { timeBudgetMs: 800 } }).cdsHooks.reviewAppUrl,
    ).toBeUndefined();
    expect(rulesConfigSchema.safeParse({ cdsHooks: { reviewAppUrl: 'not a url' } }).success).toBe(false);
  });
});
