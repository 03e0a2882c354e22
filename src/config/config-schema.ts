import { z } from 'zod';
import { draftStoreConfigDefaults, draftStoreConfigSchema } from '../drafts/drafts-config.ts';
import { modelConfigSchema } from '../model/model-config.ts';
import { rulesConfigSchema } from '../rules/rules-config.ts';
import { authConfigSchema } from './auth-config.ts';
import { clinicalContentConfigSchema } from './clinical-content-config.ts';
import { httpConfigSchema } from './http-config.ts';
import { intakeConfigSchema } from './intake-config.ts';
import { patientIntakeConfigSchema } from './patient-intake-config.ts';
import { reviewConfigSchema } from './review-config.ts';
import { imagingConfigSchema } from './vision-config.ts';

/**
 * The service's whole configuration, validated once at start. Sections owned by other parts
 * (auth, model, rules) hang under their own keys. Every key can come from the YAML file or from an
 * environment variable (see load-config.ts for the naming).
 */
const encounterStatus = z.enum([
  'planned',
  'arrived',
  'triaged',
  'in-progress',
  'onleave',
  'finished',
  'cancelled',
  'entered-in-error',
  'unknown',
]);

export const draftKindSchema = z.enum(['progress-summary', 'previsit-briefing']);

export const configSchema = z
  .object({
    port: z.coerce.number().int().min(0).max(65535).default(3000),
    host: z.string().min(1).default('127.0.0.1'),
    /** How the FHIR server and browsers reach this service (subscription endpoint, review links). */
    publicUrl: z.url().optional(),
    dataDir: z.string().min(1).default('./data'),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
    fhir: z
      .object({
        /** The EHR's FHIR R4 base. Absent: the embedded sandbox EHR serves at /sandbox/fhir. */
        baseUrl: z.url().optional(),
        timeoutMs: z.coerce.number().int().positive().default(15_000),
        maxAttempts: z.coerce.number().int().min(1).max(10).default(4),
        /** Cap on pages followed for one search, so a runaway result set cannot stall a job. */
        maxPages: z.coerce.number().int().positive().default(50),
        /** Largest response accepted from the FHIR server (bytes); larger ones are refused, never refetched. */
        maxResponseBytes: z.coerce.number().int().min(65_536).default(33_554_432),
        /**
         * The draft, its Device and its AI Provenance in one transaction Bundle, so neither exists without the
         * other. false for servers without transactions: the Provenance then follows, built from the draft's own
         * record of its sources.
         */
        transactions: z.stringbool().or(z.boolean()).default(true),
        /** Written resources declare meta.profile (AI-Device, AI-Provenance); Medplum then needs StructureDefinition.rs. */
        declareProfiles: z.stringbool().or(z.boolean()).default(true),
      })
      .default({
        timeoutMs: 15_000,
        maxAttempts: 4,
        maxPages: 50,
        maxResponseBytes: 33_554_432,
        transactions: true,
        declareProfiles: true,
      }),
    /** The HTTP server: which proxies may name the client (src/config/http-config.ts). */
    http: httpConfigSchema.prefault({}),
    notify: z
      .object({
        /** Bearer secret the FHIR server must send; set into the Subscription's channel.header. */
        secret: z.string().min(16, 'at least 16 characters').optional(),
        maxBodyBytes: z.coerce.number().int().positive().default(1_048_576),
      })
      .default({ maxBodyBytes: 1_048_576 }),
    /**
     * Operator APIs (/api/jobs and the like). Absent: the notify secret against a real EHR; in the sandbox a
     * secret generated into `<dataDir>/admin-secret` (never derived from the notify secret, which the sandbox EHR holds).
     */
    admin: z
      .object({ secret: z.string().min(16, 'at least 16 characters').optional() })
      .strict()
      .default({}),
    queue: z
      .object({
        adapter: z.enum(['sqlite', 'postgres']).default('sqlite'),
        postgresUrl: z.string().optional(),
        /** Jobs run at once; 0 makes an intake-only replica (workers run elsewhere, PostgreSQL queue). */
        concurrency: z.coerce.number().int().min(0).max(64).default(2),
        maxAttempts: z.coerce.number().int().min(1).max(50).default(6),
        backoffBaseMs: z.coerce.number().int().positive().default(1_000),
        backoffMaxMs: z.coerce.number().int().positive().default(300_000),
        /**
         * A job held longer than this by a worker that stopped answering is handed out again. A running worker
         * renews the lease (every third of it), so a long draft keeps its job; on PostgreSQL only from 10 s up.
         */
        leaseMs: z.coerce.number().int().positive().default(300_000),
        /**
         * The longest a job may run however often its lease is renewed: a run that hangs while its worker lives
         * then loses its job (retried, counted as an attempt). pg-boss caps it at 24 h.
         */
        maxJobMs: z.coerce
          .number()
          .int()
          .min(60_000)
          .max(24 * 3600 * 1000)
          .default(7_200_000),
        pollIntervalMs: z.coerce.number().int().positive().default(250),
      })
      .default({
        adapter: 'sqlite',
        concurrency: 2,
        maxAttempts: 6,
        backoffBaseMs: 1_000,
        backoffMaxMs: 300_000,
        leaseMs: 300_000,
        maxJobMs: 7_200_000,
        pollIntervalMs: 250,
      }),
    /**
     * Where every store lives (drafts, sessions, intake state, nudges): the embedded SQLite files, or
     * PostgreSQL (`DATABASE_URL`, the queue's URL) shared by replicas. Absent: PostgreSQL when a
     * DATABASE_URL is set, else SQLite. PostgreSQL also puts the queue there.
     */
    storage: z
      .object({
        adapter: z.enum(['sqlite', 'postgres']).optional(),
        /** The PostgreSQL schema the stores' tables live in (pg-boss keeps its own). */
        schema: z
          .string()
          .regex(/^[a-z_][a-z0-9_]{0,62}$/, 'a plain lower-case PostgreSQL schema name')
          .default('ehr_agent'),
        /** How often a replica tries to become the one that runs scheduled work, and the leader checks it still is. */
        leaderRetryMs: z.coerce.number().int().min(100).max(600_000).default(5_000),
      })
      .strict()
      .default({ schema: 'ehr_agent', leaderRetryMs: 5_000 }),
    drafts: z
      .object({
        /** write: drafts go to the EHR as preliminary; hold: kept here until sign-off; shadow: never written. */
        mode: z.enum(['write', 'hold', 'shadow']).default('write'),
        identifierSystem: z.string().min(1).default('urn:ehr-draft-agent:draft'),
        /**
         * Encounters that ended more than this many days ago are not drafted (skipped:too-old), so a bulk load or
         * a first start against a hospital's history never fills review lists with old visits. 0: no limit.
         */
        maxAgeDays: z.coerce.number().int().min(0).max(36_500).default(14),
        /** retentionDays, purgeSchedule: the service's draft store and its purge (src/drafts/drafts-config.ts). */
        ...draftStoreConfigSchema.shape,
      })
      .default({
        mode: 'write',
        identifierSystem: 'urn:ehr-draft-agent:draft',
        maxAgeDays: 14,
        ...draftStoreConfigDefaults,
      }),
    /** What drafts may say: social history, sensitive findings left out (src/config/clinical-content-config.ts). */
    clinicalContent: clinicalContentConfigSchema,
    /** Which encounter status produces which draft (informatics teams own this). */
    triggers: z
      .partialRecord(encounterStatus, draftKindSchema)
      .default({ finished: 'progress-summary', planned: 'previsit-briefing', arrived: 'previsit-briefing' }),
    /** Event sources, polling, subscription tracking, rate limits (src/config/intake-config.ts). */
    intake: intakeConfigSchema.prefault({}),
    /** SMART Backend Services (the service's own access) and SMART App Launch (clinicians), src/config/auth-config.ts. */
    auth: authConfigSchema,
    /** Which engine writes drafts (extractive, in-process GGUF, remote server) and the agents' budgets (src/model/model-config.ts). */
    model: modelConfigSchema.prefault({}),
    /** Images in the record: limits, the PACS, MedSigLIP triage (src/config/vision-config.ts). */
    imaging: imagingConfigSchema.prefault({}),
    /** Guideline rules, suppression, CDS Hooks (src/rules/rules-config.ts). */
    rules: rulesConfigSchema.prefault({}),
    /** The clinician review page (src/config/review-config.ts). */
    review: reviewConfigSchema,
    /** Pre-visit intake: invitation links, the patient's interview, urgency (src/config/patient-intake-config.ts). */
    patientIntake: patientIntakeConfigSchema.prefault({}),
    sandbox: z
      .object({
        patients: z.coerce.number().int().min(1).max(2000).default(12),
        seed: z.coerce.number().int().default(20261127),
        /**
         * Endpoints the sandbox's subscriptions may notify besides the service's own /notify, each matched
         * exactly (tests' receivers); anything else is refused, so the sandbox cannot be aimed at other hosts.
         */
        subscriptionEndpoints: z.array(z.url({ protocol: /^https?$/ })).default([]),
        /** The sandbox EHR's SMART authorization (src/sandbox/authorization/). */
        auth: z
          .object({
            /** Refuse requests without a token even from loopback (by default they act as the EHR's administrator). */
            required: z.stringbool().or(z.boolean()).default(false),
            /** Honour only the first scope per resource type, as Medplum does under an explicit access policy. */
            onlyFirstScopePerType: z.stringbool().or(z.boolean()).default(false),
            /**
             * Refuse a write declaring meta.profile without StructureDefinition.rs, as Medplum does. On by
             * default, so the default run proves fhir.declareProfiles and the default scopes work together.
             */
            medplumProfileCheck: z.stringbool().or(z.boolean()).default(true),
          })
          .strict()
          .default({ required: false, onlyFirstScopePerType: false, medplumProfileCheck: true }),
      })
      .default({
        patients: 12,
        seed: 20261127,
        subscriptionEndpoints: [],
        auth: { required: false, onlyFirstScopePerType: false, medplumProfileCheck: true },
      }),
  })
  .strict()
  .superRefine((config, context) => {
    // No open mode outside the embedded sandbox: a real EHR's events must prove where they come from.
    if (config.fhir.baseUrl && !config.notify.secret) {
      context.addIssue({
        code: 'custom',
        path: ['notify', 'secret'],
        message:
          'is required when fhir.baseUrl points at a real EHR (set NOTIFY_SECRET, at least 16 characters)',
      });
    }
    // Links a patient opens must not be forgeable: no generated secret against a real EHR.
    if (config.fhir.baseUrl && config.patientIntake.enabled && !config.patientIntake.secret) {
      context.addIssue({
        code: 'custom',
        path: ['patientIntake', 'secret'],
        message: 'is required when patientIntake.enabled is set against a real EHR (at least 32 characters)',
      });
    }
  });

export type ServiceConfig = z.infer<typeof configSchema>;
export type DraftKindName = z.infer<typeof draftKindSchema>;
