import { existsSync } from 'node:fs';
import path from 'node:path';
import { suitesMayRun } from './prerequisites.ts';
import { repoRoot } from './shared-fixtures.ts';

/** The CQL model info and FHIRHelpers the CQL suites compile against, from the team's shared reference folder. */
export const cqlModelDirectory = path.resolve(repoRoot, '../shared/reference/cql');
export const haveCqlModels = suitesMayRun(
  `the CQL model info and FHIRHelpers in ${cqlModelDirectory}`,
  existsSync(path.join(cqlModelDirectory, 'FHIRHelpers-4.0.1.cql')),
  { skipped: 'the CQL suites are skipped' },
);
