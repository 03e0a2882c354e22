import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root, and the team's shared fixtures beside it (absent on a user's machine: tests skip). */
export const repoRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const candidate = path.resolve(repoRoot, '../shared/fixtures');
export const sharedFixtures: string | undefined = existsSync(candidate) ? candidate : undefined;

if (!sharedFixtures) {
  console.warn(
    `../shared/fixtures not found next to ${repoRoot}: tests that use the shared Synthea and Backport fixtures are skipped`,
  );
}
