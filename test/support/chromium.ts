import { existsSync } from 'node:fs';
import { type Browser, chromium } from 'playwright-core';
import { suitesMayRun } from './prerequisites.ts';

/** Debian's Chromium, which .ci/run installs; browser suites skip with a reason where it is missing (not under CI). */
export const chromiumPath = '/usr/bin/chromium';
export const hasChromium = suitesMayRun(`Chromium at ${chromiumPath}`, existsSync(chromiumPath), {
  skipped: 'browser suites are skipped (apt-get install chromium)',
});

/** Headless, sandboxless as root, and without the background traffic this closed network refuses. */
export function launchChromium(): Promise<Browser> {
  return chromium.launch({
    executablePath: chromiumPath,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--no-first-run',
    ],
  });
}
