import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { parseConfiguration } from '../../src/eval/configurations.ts';
import { runEvaluation } from '../../src/eval/run-eval.ts';
import { startEmbeddedSandbox } from '../../src/eval/sources.ts';
import { silentLogger } from '../../src/log.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';

/**
 * The other sources an evaluation reads: any FHIR base (here a sandbox in this process, reached only by
 * its URL: no planted truth is known then) and an NDJSON folder (the shared Synthea patients).
 */
let served: Awaited<ReturnType<typeof startEmbeddedSandbox>>;

beforeAll(async () => {
  const patients = generatePatients({ count: 4, seed: 3, maxNotesPerPatient: 6, plantFacts: true });
  // Patient 0 is the long-history one; the server is given the three after it.
  served = await startEmbeddedSandbox((sandbox) =>
    sandbox.seed(patients.slice(1).flatMap((patient) => patient.resources)),
  );
}, 60_000);

afterAll(async () => {
  await served?.close();
});

describe('eval sources', () => {
  it('reads any FHIR base over HTTP, asking no planted statement it cannot know', async () => {
    const report = await runEvaluation({
      source: { kind: 'fhir-base', url: served.baseUrl, patients: 2 },
      configurations: [parseConfiguration('extractive')],
      logger: silentLogger(),
    });
    expect(report.labelledSet.patients).toBe(2);
    expect(report.labelledSet.facts.planted).toBe(0);
    expect(report.labelledSet.facts.problem).toBeGreaterThan(0);
    expect(report.configurations[0].patients).toBe(2);
    expect(report.configurations[0].factRecall.byCategory.planted.value).toBeNull();
    expect(report.source).toContain(new URL(served.baseUrl).origin);
  }, 120_000);

  it.skipIf(!sharedFixtures)(
    'loads an NDJSON folder (Synthea) into an embedded sandbox',
    async () => {
      const report = await runEvaluation({
        source: { kind: 'ndjson', folder: `${sharedFixtures}/synthea-r4`, patients: 3 },
        configurations: [parseConfiguration('extractive')],
        logger: silentLogger(),
      });
      // A patient who died before their last visit is not drafted, as in the pipeline.
      expect(report.labelledSet.patients + report.labelledSet.skippedDeceased).toBe(3);
      expect(report.labelledSet.patients).toBeGreaterThan(0);
      expect(report.labelledSet.facts.problem).toBeGreaterThan(0);
      expect(report.configurations[0].wrongPatientCitations).toBe(0);
      expect(report.configurations[0].factRecall.overall.value).toBeGreaterThan(0);
    },
    120_000,
  );
});
