import { z } from 'zod';

/**
 * The rules section of the service configuration (key `rules`). Paths are relative to the process's
 * working directory, like the rest of the configuration.
 */
export const rulesConfigSchema = z
  .object({
    /** Folder of rule YAML files (and their fixtures, and a `cql/` folder of libraries). */
    directory: z.string().min(1).default('config/rules'),
    /** Local value-set file that FHIRPath `inValueSet()` and CQL value sets resolve against. */
    valueSetFile: z.string().min(1).default('config/rules/valuesets.json'),
    /**
     * Folder with the CQL model info (system-modelinfo.xml, optionally fhir-modelinfo-4.0.1.xml) and
     * FHIRHelpers-4.0.1.cql. Only needed to compile CQL source; ELM JSON runs without it.
     */
    cqlModelDirectory: z.string().min(1).optional(),
    /** Watch the rules folder and reload on change (an invalid set is refused, the last valid one serves). */
    watch: z.boolean().default(true),
    /**
     * Also compare the files' content this often (seconds; 0: never), for changes a file system does
     * not report (network mounts, replaced folders). Only while watching.
     */
    rescanSeconds: z.number().int().min(0).max(3600).default(30),
    suppression: z
      .object({
        /** A rule that sets no suppression fires at most once per this many days per patient. */
        defaultDays: z.number().int().min(0).max(3650).default(90),
      })
      .default({ defaultDays: 90 }),
    /** At most this many nudges per encounter (by severity, then rule order); the rest are counted as capped. */
    perEncounterCap: z.number().int().min(1).max(50).default(5),
    cdsHooks: z
      .object({
        /** Live evaluation (fetch + rules) gives up after this long and answers with no cards. */
        timeBudgetMs: z.number().int().min(50).max(60_000).default(1_500),
        /** SMART launch URL of the review app, for the cards' `smart` links; default `<publicUrl>/smart/launch`. */
        reviewAppUrl: z.url().optional(),
        /**
         * CDS clients (EHRs) allowed to call, each by its JWT issuer and JWKS URL (CDS Hooks 2.0 security).
         * Empty: only the embedded sandbox answers; against a real EHR every hook call is refused (401)
         * unless `allowUnauthenticated` is set.
         */
        clients: z.array(z.object({ issuer: z.string().min(1), jwksUrl: z.url() }).strict()).default([]),
        /** Answer hook calls without a client JWT against a real EHR (a closed network only; logged at every start). */
        allowUnauthenticated: z.boolean().default(false),
      })
      .default({ timeBudgetMs: 1_500, clients: [], allowUnauthenticated: false }),
    /** SQLite file of nudge deliveries and outcomes (suppression and `rules stats`). Absent: in memory. */
    storeFile: z.string().min(1).optional(),
  })
  .strict();

export type RulesConfig = z.infer<typeof rulesConfigSchema>;

export const defaultRulesConfig: RulesConfig = rulesConfigSchema.parse({});
