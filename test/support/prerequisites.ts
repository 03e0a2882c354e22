/**
 * What a suite needs from the machine (the team's shared fixtures, PostgreSQL, Chromium, the CQL model
 * files). On a user's machine a missing one skips the suites that need it, with a message. Under CI (CI
 * set, as .ci/run does) a missing one never hides a suite: the suites run, and fail on what is missing.
 */
export function isContinuousIntegration(environment: NodeJS.ProcessEnv = process.env): boolean {
  const value = environment.CI?.trim().toLowerCase();
  return value !== undefined && value !== '' && value !== 'false' && value !== '0';
}

/** True when the suites that need `name` should run: it is there, or CI must see them fail without it. */
export function suitesMayRun(
  name: string,
  available: boolean,
  options: { skipped: string; environment?: NodeJS.ProcessEnv; report?: Pick<Console, 'warn' | 'error'> } = {
    skipped: 'the suites that need it are skipped',
  },
): boolean {
  const report = options.report ?? console;
  if (available) return true;
  if (isContinuousIntegration(options.environment)) {
    report.error(`CI: ${name} is missing; the suites that need it run and fail instead of being skipped`);
    return true;
  }
  report.warn(`${name} is missing: ${options.skipped}`);
  return false;
}
