import { parseConfiguration } from '../src/eval/configurations.ts';
import { runEvaluation } from '../src/eval/run-eval.ts';
import { silentLogger } from '../src/log.ts';

/**
 * Issue 15's benchmark: for the sandbox's 376-note patient (scenario 0), the scripted cooperative model's
 * fact recall of the structured facts and of the statements planted in its notes, the tokens it was sent
 * against a naive JSON dump of the same record, and its model calls against chunks + 2 - through the
 * eval harness, so the figures are those `npm run eval` reports. The extractive engine is measured beside
 * it as the baseline a model must beat. Target: recall >= 0.95 (both), <= 1/50 of naive tokens, calls <=
 * chunks + 2. Reported whether met or not.
 */
export async function run(): Promise<Record<string, unknown>> {
  const report = await runEvaluation({
    source: { kind: 'sandbox', patients: 1, seed: 20261127 },
    configurations: [parseConfiguration('extractive'), parseConfiguration('scripted')],
    logger: silentLogger(),
  });
  const scripted = report.benchmark.find((figures) => figures.configuration === 'scripted');
  return {
    source: report.source,
    tokenEstimate: 'characters / 3 for both sides',
    targets: {
      scriptedRecallAtLeast095: scripted?.targets.recallAtLeast095 ?? false,
      scriptedAtMostAFiftiethOfNaive: scripted?.targets.atMostAFiftiethOfNaive ?? false,
      scriptedCallsWithinChunksPlusTwo: scripted?.targets.callsWithinChunksPlusTwo ?? false,
    },
    benchmark: report.benchmark,
    configurations: report.configurations.map((figures) => ({
      name: figures.name,
      drafts: figures.drafts,
      factRecall: figures.factRecall.overall.value,
      byCategory: Object.fromEntries(
        Object.entries(figures.factRecall.byCategory).map(([category, estimate]) => [
          category,
          estimate.value,
        ]),
      ),
      statementSupport: figures.statementSupport.value,
      wrongPatientCitations: figures.wrongPatientCitations,
    })),
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await run(), null, 2));
}
