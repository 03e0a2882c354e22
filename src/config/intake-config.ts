import { z } from 'zod';

/**
 * Event intake: which sources are on, the polling reconciler, subscription counter tracking, the
 * heartbeat watchdog, per-subscription HMAC secrets, the allow-list of hosts the service calls back,
 * and rate limits for unauthenticated or empty-payload floods. Hangs under the `intake` key.
 */
const booleanish = z.union([z.boolean(), z.enum(['true', 'false']).transform((value) => value === 'true')]);

export const intakeConfigSchema = z
  .object({
    sources: z
      .object({
        /** FHIR Subscriptions Backport IG (R4) topic-based rest-hook notifications at POST /notify. */
        backport: booleanish.default(true),
        /** Classic R4 rest-hook: HAPI's empty POST and PUT /notify/Encounter/<id>. */
        classic: booleanish.default(true),
        /** Medplum's bare-resource POST signed with X-Signature. */
        medplum: booleanish.default(true),
        /** The polling reconciler on a schedule (always available as the recovery path). */
        polling: booleanish.default(true),
        /** CDS Hooks encounter-start / encounter-discharge calls turned into events. */
        cdsHooks: booleanish.default(true),
      })
      .prefault({}),
    polling: z
      .object({
        /** node-cron expression (seconds field allowed). */
        cron: z.string().min(1).default('*/1 * * * *'),
        /** Looks back this far behind the cursor, for late commits and clock skew. */
        overlapMs: z.coerce.number().int().min(0).default(300_000),
        pageSize: z.coerce.number().int().min(1).max(1000).default(100),
        /** Where the very first poll starts, behind now, so a fresh install does not draft all history. */
        initialLookbackMs: z.coerce.number().int().min(0).default(3_600_000),
      })
      .prefault({}),
    /** How long a missing event number may stay missing (it may arrive out of order) before recovery. */
    gapGraceMs: z.coerce.number().int().min(0).default(30_000),
    heartbeat: z
      .object({
        /**
         * Silence (no notification, no heartbeat) longer than this triggers $status, reconcile and
         * reactivation. 0 = off. Default: 2.5 x the 120 s heartbeat the service asks for, so one late
         * heartbeat is not an alarm.
         */
        periodMs: z.coerce.number().int().min(0).default(300_000),
        checkIntervalMs: z.coerce.number().int().positive().default(15_000),
      })
      .prefault({}),
    /** Whether to ask the server's $events for missing numbers before falling back to polling. */
    useEventsOperation: booleanish.default(true),
    /**
     * Medplum subscription id -> HMAC secret (X-Signature), for Medplum subscriptions made outside the
     * service. JSON in the environment variable. The one the service makes needs no entry: its secret is
     * generated into `<dataDir>/medplum-subscription-secret` and used without a restart.
     */
    medplumSecrets: z.record(z.string(), z.string().min(16, 'at least 16 characters')).default({}),
    /**
     * The HMAC secret of the Subscription the service makes on Medplum. Unset: generated into
     * `<dataDir>/medplum-subscription-secret`. Replicas that do not share a data directory (Kubernetes pods)
     * must share this one, or each would rewrite the Subscription with its own and refuse the others' deliveries.
     */
    medplumSubscriptionSecret: z.string().min(16, 'at least 16 characters').optional(),
    /**
     * Subscriptions made outside the service (it did not ensure them) whose event counters intake
     * tracks: ids, `Subscription/<id>` or absolute URLs. The one the service ensures is always tracked;
     * notifications of any other are worked but leave no state (metric outcome `untracked-subscription`).
     */
    trackedSubscriptions: z.array(z.string().trim().min(1).max(1_024)).default([]),
    /** Hosts besides the FHIR base's own that the service may call back ($status, $events). */
    callbackHosts: z.array(z.string().min(1)).default([]),
    rateLimit: z
      .object({
        /** Failed authentications allowed per client address per minute before 429. */
        unauthenticatedPerMinute: z.coerce.number().int().min(1).default(30),
        /** Empty-payload notifications (each one triggers a reconcile) per client per minute. */
        emptyPayloadPerMinute: z.coerce.number().int().min(1).default(120),
      })
      .prefault({}),
    subscription: z
      .object({
        /** Make sure the Subscription exists on the FHIR server at start. */
        ensureOnStart: booleanish.default(true),
        mode: z.enum(['backport', 'classic']).default('backport'),
        topic: z.string().min(1).default('http://hl7.org/SubscriptionTopic/encounter-change'),
        criteria: z.string().min(1).default('Encounter?'),
        payload: z.enum(['id-only', 'full-resource', 'empty']).default('id-only'),
        heartbeatSeconds: z.coerce.number().int().min(0).default(120),
        /**
         * Which server the Subscription is made for. `auto` recognises Medplum from the CapabilityStatement's
         * software name; `medplum` makes a classic rest-hook, created `active` with a subscription secret the
         * service generates into the data directory (Medplum delivers only active ones, signed with X-Signature).
         */
        server: z.enum(['auto', 'medplum', 'generic']).default('auto'),
        /**
         * How long after creating or finding its Subscription the service waits for a handshake, a heartbeat,
         * an event or the status `active` before saying the Subscription is unconfirmed and polling by itself.
         */
        confirmWithinMs: z.coerce.number().int().min(1).default(60_000),
      })
      .prefault({}),
    /** Part of the idempotency key; by default derived from triggers, drafts and engine settings. */
    configurationVersion: z.string().min(1).optional(),
  })
  .strict();

export type IntakeConfig = z.infer<typeof intakeConfigSchema>;
