import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { suitesMayRun } from './prerequisites.ts';

/**
 * The repository root, and the team's shared fixtures beside it: absent on a user's machine, where the
 * suites that read them skip; under CI they run (and fail) without them.
 */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const candidate = path.resolve(repoRoot, '../shared/fixtures');
export const sharedFixtures: string | undefined = suitesMayRun(
  `../shared/fixtures (next to ${repoRoot})`,
  existsSync(candidate),
  { skipped: 'tests that use the shared Synthea and Backport fixtures are skipped' },
)
  ? candidate
  : undefined;
