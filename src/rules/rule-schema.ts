import { z } from 'zod';

/**
 * The shape of one rule file, as informatics teams write it. Strict objects: an unknown field is a
 * typo until proven otherwise, and a typo in a clinical rule must not pass silently.
 */
export const ruleTriggers = [
  'encounter-planned',
  'encounter-arrived',
  'encounter-triaged',
  'encounter-in-progress',
  'encounter-finished',
  'patient-view',
  'encounter-start',
] as const;
export type RuleTrigger = (typeof ruleTriggers)[number];

export const severities = ['info', 'warning', 'critical'] as const;
export type Severity = (typeof severities)[number];

export const urgencyLevels = ['routine', 'soon', 'urgent'] as const;

/** What a card may propose: requests and recommendations a clinician then signs, never a finished act. */
export const proposableResourceTypes = [
  'ServiceRequest',
  'MedicationRequest',
  'ImmunizationRecommendation',
  'CommunicationRequest',
  'Task',
] as const;
export type UrgencyLevel = (typeof urgencyLevels)[number];

const identifier = z
  .string()
  .regex(/^[a-z0-9][a-z0-9-]{1,63}$/, 'lower-case letters, digits and dashes, 2-64 characters');

const criterionBase = {
  id: identifier,
  /** What the criterion checks, in words; `rules explain` prints it. */
  description: z.string().min(1),
};

const cqlReferenceSchema = z
  .object({
    library: z.string().min(1),
    /** The define whose truth (true, or a non-empty result) makes the criterion hold. */
    expression: z.string().min(1),
    /**
     * Values of the library's parameters, by name (`Measurement Period: 2021`, `"2021-01-01/2021-06-30"`
     * or `{ start, end }`). An unset Measurement Period is the evaluation date's calendar year.
     */
    parameters: z.record(z.string().min(1), z.unknown()).optional(),
  })
  .strict();

/**
 * One object with either `fhirpath` or `cql` (not a union of two shapes: a union can only say "Invalid
 * input" for a typo, where one strict object names the unknown field).
 */
export const criterionSchema = z
  .object({
    ...criterionBase,
    fhirpath: z.string().min(1).optional(),
    cql: cqlReferenceSchema.optional(),
  })
  .strict()
  .superRefine((criterion, context) => {
    if ((criterion.fhirpath === undefined) === (criterion.cql === undefined)) {
      context.addIssue({
        code: 'custom',
        message:
          criterion.fhirpath === undefined
            ? 'a criterion needs either fhirpath or cql'
            : 'a criterion has either fhirpath or cql, not both',
      });
    }
  });

export const ruleTestSchema = z
  .object({
    /** A FHIR Bundle of one patient's resources, relative to the rule file. */
    fixture: z.string().min(1),
    expect: z.enum(['fires', 'does-not-fire']),
    /** Evaluation instant, so fixtures with fixed dates stay valid as time passes. */
    now: z.iso.datetime({ offset: true }).or(z.iso.date()),
    trigger: z.enum(ruleTriggers).optional(),
    /** Urgency the fired nudge must carry, when the rule sets one. */
    expectUrgency: z.enum(urgencyLevels).optional(),
    /** CQL parameter values for this test, over the criteria's own (a test patient's measurement period). */
    parameters: z.record(z.string().min(1), z.unknown()).optional(),
  })
  .strict();

export const ruleDocumentSchema = z
  .object({
    id: identifier,
    version: z.string().regex(/^\d+\.\d+\.\d+$/, 'semantic version like 1.0.0'),
    title: z.string().min(1).max(200),
    /** Off switch that keeps the rule in the file (for example while a team tunes it). */
    enabled: z.boolean().default(true),
    /**
     * `silent`: evaluated and counted (stats, backtests) but never shown, to validate a rule on live
     * traffic before go-live. `active` (default): shown.
     */
    mode: z.enum(['active', 'silent']).default('active'),
    /**
     * Only for these encounters (each list given must match; any entry of a list matches): encounter
     * class codes (`AMB`, `EMER`, `IMP`), type codes (`code` or `system|code`), location ids (the
     * Encounter's locations) and departments (its serviceProvider Organization id or a serviceType code).
     */
    applies: z
      .object({
        encounterClasses: z.array(z.string().min(1)).min(1).optional(),
        encounterTypes: z.array(z.string().min(1)).min(1).optional(),
        locations: z.array(z.string().min(1)).min(1).optional(),
        departments: z.array(z.string().min(1)).min(1).optional(),
      })
      .strict()
      .optional(),
    trigger: z.array(z.enum(ruleTriggers)).min(1),
    severity: z.enum(severities),
    guideline: z
      .object({
        label: z.string().min(1),
        url: z.url(),
        recommendation: z.string().min(1),
        grade: z.string().min(1).optional(),
      })
      .strict(),
    /**
     * Named FHIRPath sub-expressions (`%name` in criteria, values and later defines), computed once
     * per patient when first needed: a collection several criteria filter further is filtered once.
     */
    define: z
      .record(
        z.string().regex(/^[a-z][A-Za-z0-9]{0,63}$/, 'camelCase name starting with a lower-case letter'),
        z.string().min(1),
      )
      .default({}),
    condition: z
      .object({
        match: z.enum(['all', 'any']).default('all'),
        criteria: z.array(criterionSchema).min(1),
      })
      .strict(),
    /** Named FHIRPath expressions whose first value fills `{{name}}` in the templates. */
    values: z.record(identifier, z.string().min(1)).default({}),
    /** Card summary (under 140 characters once filled); defaults to the title. */
    summary: z.string().min(1).max(139).optional(),
    suggestedAction: z.string().min(1),
    /**
     * Actions a card offers to take in one click (CDS Hooks suggestions): each a FHIR resource to create,
     * such as a ServiceRequest for a screening, a MedicationRequest proposal or an ImmunizationRecommendation.
     * Strings may use `{{values}}`; the patient, the encounter and proposal status are filled in.
     */
    suggestions: z
      .array(
        z
          .object({
            label: z.string().min(1).max(140),
            isRecommended: z.boolean().optional(),
            resource: z.object({ resourceType: z.enum(proposableResourceTypes) }).catchall(z.unknown()),
          })
          .strict(),
      )
      .default([]),
    suppression: z
      .object({
        /** Not more than once per this many days per patient (0: every time). */
        days: z.number().int().min(0).max(3650),
      })
      .strict()
      .optional(),
    urgency: z
      .object({
        level: z.enum(urgencyLevels),
        reason: z.string().min(1),
      })
      .strict()
      .optional(),
    tests: z.array(ruleTestSchema).default([]),
  })
  .strict();

export type RuleDocument = z.infer<typeof ruleDocumentSchema>;
export type Criterion = z.infer<typeof criterionSchema>;
export type RuleTest = z.infer<typeof ruleTestSchema>;
