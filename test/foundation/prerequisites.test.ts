import { describe, expect, it, vi } from 'vitest';
import { isContinuousIntegration, suitesMayRun } from '../support/prerequisites.ts';

/** CI never hides a suite: a missing prerequisite skips only on a user's machine, with a message. */
describe('suite prerequisites', () => {
  const report = () => ({ warn: vi.fn(), error: vi.fn() });

  it('skips with a message on a user machine when a prerequisite is missing', () => {
    const messages = report();
    expect(
      suitesMayRun('PostgreSQL', false, {
        skipped: 'pg-boss suites are skipped',
        environment: {},
        report: messages,
      }),
    ).toBe(false);
    expect(messages.warn).toHaveBeenCalledWith('PostgreSQL is missing: pg-boss suites are skipped');
  });

  it('runs the suites under CI, so they fail on what is missing, and says so', () => {
    const messages = report();
    expect(
      suitesMayRun('Chromium', false, { skipped: 'skipped', environment: { CI: 'true' }, report: messages }),
    ).toBe(true);
    expect(messages.error).toHaveBeenCalledWith(
      'CI: Chromium is missing; the suites that need it run and fail instead of being skipped',
    );
    expect(messages.warn).not.toHaveBeenCalled();
  });

  it('says nothing when the prerequisite is there', () => {
    const messages = report();
    expect(suitesMayRun('x', true, { skipped: 's', environment: { CI: 'true' }, report: messages })).toBe(
      true,
    );
    expect(messages.warn).not.toHaveBeenCalled();
    expect(messages.error).not.toHaveBeenCalled();
  });

  it('reads CI as .ci/run and CI services set it', () => {
    expect(isContinuousIntegration({ CI: 'true' })).toBe(true);
    expect(isContinuousIntegration({ CI: '1' })).toBe(true);
    for (const value of [undefined, '', 'false', '0'])
      expect(isContinuousIntegration({ CI: value })).toBe(false);
  });
});
