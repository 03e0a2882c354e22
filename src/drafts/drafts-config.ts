import { z } from 'zod';

/**
 * Settings of the service's own draft store and its purge. Hangs under `drafts` beside the existing
 * `mode` and `identifierSystem` keys (the lead wires it into the root schema).
 */
export const draftStoreConfigSchema = z.object({
  /** Days a stored draft (hold, shadow) and a finished job are kept after their last change. */
  retentionDays: z.coerce.number().int().min(1).max(3650).default(30),
  /** When the purge runs (node-cron syntax, the service's local time). Default: 03:17 every night. */
  purgeSchedule: z.string().min(9).default('17 3 * * *'),
});

export type DraftStoreConfig = z.infer<typeof draftStoreConfigSchema>;
export const draftStoreConfigDefaults: DraftStoreConfig = { retentionDays: 30, purgeSchedule: '17 3 * * *' };
