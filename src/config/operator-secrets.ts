import { randomBytes } from 'node:crypto';
import { chmodSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { ServiceConfig } from './config-schema.ts';

/**
 * The two secrets that guard the service's own doors: the notify secret (what the FHIR server sends to
 * /notify) and the admin secret (operator APIs such as /api/jobs). Outside the sandbox both come from
 * configuration, and the schema already refused a start without a notify secret. In the sandbox, missing
 * ones are generated: the notify secret per run (the sandbox EHR is handed it in its Subscription), the
 * admin secret once into the data directory (0600), so it is never derivable from what the EHR holds.
 */
export interface OperatorSecrets {
  notifySecret: string;
  adminSecret: string;
  /** Where a generated admin secret is kept, for the start-up banner (sandbox only). */
  adminSecretFile?: string;
}

export function resolveOperatorSecrets(
  config: Pick<ServiceConfig, 'notify' | 'admin'>,
  options: { sandbox: boolean; dataDir: string },
): OperatorSecrets {
  if (!options.sandbox) {
    // Repeats the schema's check for configurations built without it (tests, embedding code).
    if (!config.notify.secret) throw new Error('notify.secret is required outside the sandbox');
    return { notifySecret: config.notify.secret, adminSecret: config.admin.secret ?? config.notify.secret };
  }
  const notifySecret = config.notify.secret ?? randomBytes(24).toString('hex');
  if (config.admin.secret) return { notifySecret, adminSecret: config.admin.secret };
  const adminSecretFile = path.join(options.dataDir, 'admin-secret');
  return { notifySecret, adminSecret: readOrCreateSecretFile(adminSecretFile), adminSecretFile };
}

/** A secret kept in a file only the service's user can read; made on first use. */
export function readOrCreateSecretFile(file: string): string {
  try {
    const existing = readFileSync(file, 'utf8').trim();
    if ((statSync(file).mode & 0o777) !== 0o600) chmodSync(file, 0o600);
    if (existing.length >= 16) return existing;
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const secret = randomBytes(32).toString('hex');
  writeFileSync(file, `${secret}\n`, { mode: 0o600 });
  chmodSync(file, 0o600);
  return secret;
}
