import { z } from 'zod';

/**
 * Pre-visit intake (key `patientIntake`): the one-time links patients receive when a visit is booked, the
 * interview they answer, and what the site lets the page show. Paths are relative to the working directory.
 */
const booleanish = z.union([z.boolean(), z.enum(['true', 'false']).transform((value) => value === 'true')]);

export const patientIntakeConfigSchema = z
  .object({
    /** Unset: on in the embedded sandbox, off against a real EHR (where it needs `secret`). */
    enabled: booleanish.optional(),
    /**
     * Seals the links (AES-256-GCM, key derived with HKDF): a link cannot be forged or altered, and its URL
     * holds nothing readable. Required outside the sandbox; the sandbox keeps a generated one in its data folder.
     */
    secret: z.string().min(32, 'at least 32 characters').optional(),
    /** How long a link stays valid after the invitation is written. */
    linkLifetimeHours: z.coerce
      .number()
      .int()
      .min(1)
      .max(24 * 30)
      .default(72),
    /** Encounter statuses that invite the patient (a booked visit). */
    inviteOnStatuses: z
      .array(z.enum(['planned', 'arrived']))
      .min(1)
      .default(['planned']),
    /** Folder with questionnaire.<language>.json (FHIR Questionnaires) and red-flags.yaml. */
    directory: z.string().min(1).default('config/intake'),
    /** The language used when the patient's preferred one (Patient.communication) has no questionnaire. */
    defaultLanguage: z
      .string()
      .regex(/^[a-z]{2}$/, 'a two-letter language code')
      .default('en'),
    /**
     * Show the record's medication and allergy lists on the page for the patient to confirm. Off by default:
     * the page shows nothing from the record unless the site allows it.
     */
    showRecordLists: booleanish.default(false),
    /** Adaptive follow-up questions the model may add (0: none; the Questionnaire's enableWhen still branches). */
    maxFollowUpQuestions: z.coerce.number().int().min(0).max(5).default(3),
    /** Characters kept of one free-text answer. */
    maxAnswerCharacters: z.coerce.number().int().min(20).max(2000).default(500),
    /** Requests per minute one link, and one client address, may make. */
    rateLimit: z
      .object({
        perLinkPerMinute: z.coerce.number().int().min(1).default(20),
        perAddressPerMinute: z.coerce.number().int().min(1).default(60),
      })
      .prefault({}),
    /** Identifier systems of the invitation (Communication) and the answers (QuestionnaireResponse). */
    identifierSystem: z.string().min(1).default('urn:ehr-draft-agent:patient-intake'),
    /**
     * Standalone SMART patient launch for portals (`GET /intake/launch?iss=`): the portal opens the intake as a
     * patient app; the patient's token (`patient/` scopes, `launch/patient`) names the patient and finds the next
     * booked visit, which gets a fresh link. Unset: off (the sandbox registers its own client).
     */
    launch: z
      .object({
        clientId: z.string().min(1),
        /** FHIR servers a launch may name as iss, compared exactly. */
        allowedIssuers: z.array(z.url({ protocol: /^https?$/ })).min(1),
        scopes: z
          .array(z.string().regex(/^[\x21-\x7e]+$/))
          .default([
            'launch/patient',
            'openid',
            'fhirUser',
            'patient/Patient.r',
            'patient/Encounter.rs',
            'patient/Appointment.rs',
          ]),
        /** Default: `<publicUrl>/intake/callback`. */
        redirectUri: z.url({ protocol: /^https?$/ }).optional(),
      })
      .strict()
      .optional(),
    /** What an urgent answer shows the patient at once, by language (`en`, `es`, ...). */
    urgentInstruction: z.record(z.string().regex(/^[a-z]{2}$/), z.string().min(1).max(500)).default({
      en: 'Your answers suggest you may need help now. Call 911 or go to the nearest emergency department. Do not wait for your appointment.',
      es: 'Sus respuestas indican que puede necesitar ayuda ahora. Llame al 911 o vaya a la sala de emergencias más cercana. No espere a su cita.',
    }),
  })
  .strict();

export type PatientIntakeConfig = z.infer<typeof patientIntakeConfigSchema>;
