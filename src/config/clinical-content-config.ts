import { z } from 'zod';

/**
 * What an automatic draft may say about a patient (root key `clinicalContent`), owned by the site. Social and
 * administrative findings that EHRs store as Conditions (employment, education, housing) go to a short "Social
 * history" section or are left out. Sensitive findings (intimate partner violence, criminal justice, substance use,
 * HIV, reproductive and mental health) are never shown to a model or written into a draft unless their category is
 * allowed here; the draft says how many findings were left out. agents/clinical-content-policy.ts applies it.
 */
export const sensitiveCategories = [
  'intimate-partner-violence',
  'criminal-justice',
  'substance-use',
  'hiv',
  'reproductive-health',
  'mental-health',
] as const;

export type SensitiveCategory = (typeof sensitiveCategories)[number];

/**
 * A code as a site lists it: `system|code` (`http://snomed.info/sct|706893006`), a bare code (any system), or
 * either ending in `*` for every code that starts so (`http://hl7.org/fhir/sid/icd-10-cm|F1*`).
 */
const codeEntry = z
  .string()
  .trim()
  .regex(
    /^(?:[^\s|]+\|)?[A-Za-z0-9.-]+\*?$/,
    'must be a code, system|code, or a prefix ending in * (e.g. http://snomed.info/sct|706893006)',
  );

const codeList = z.preprocess(
  (value) => (typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean) : value),
  z.array(codeEntry),
);

export const clinicalContentConfigSchema = z
  .object({
    /** section: social and administrative findings under "Social history"; omit: left out (and counted). */
    socialHistory: z.enum(['section', 'omit']).default('section'),
    /** Further codes the site counts as social or administrative findings, besides the built-in lists. */
    socialCodes: codeList.default([]),
    sensitive: z
      .object({
        /** Sensitive categories this site allows in automatic drafts (none by default). */
        allow: z
          .preprocess(
            (value) => (typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean) : value),
            z.array(z.enum(sensitiveCategories)),
          )
          .default([]),
        /** Further codes per category, besides the built-in SNOMED CT, ICD-10-CM and LOINC lists. */
        codes: z.partialRecord(z.enum(sensitiveCategories), codeList).default({}),
        /**
         * Also match the words of a finding's name ("intimate partner", "HIV", "opioid", "pregnancy"...), for
         * local codes no list knows. Errs on the side of leaving out; switch off only with complete code lists.
         */
        matchNames: z.stringbool().or(z.boolean()).default(true),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .prefault({});

export type ClinicalContentConfig = z.infer<typeof clinicalContentConfigSchema>;
