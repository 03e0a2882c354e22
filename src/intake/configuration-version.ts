import { createHash } from 'node:crypto';

/**
 * The configuration version in the idempotency key: a short hash of the settings that change what a
 * draft says (triggers, draft identity, engine). Changing them makes the same encounter version worth
 * drafting again; restarting with the same settings does not.
 */
export function configurationVersion(parts: unknown): string {
  return createHash('sha256').update(JSON.stringify(parts)).digest('hex').slice(0, 12);
}
