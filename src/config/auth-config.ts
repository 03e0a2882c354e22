import { z } from 'zod';

/**
 * Settings for the two kinds of SMART access the service has:
 * - `backend`: the service's own access to the FHIR server (SMART Backend Services, a static token, or none);
 * - `launch`: clinicians launching the review app from their EHR (SMART App Launch 2.2).
 * Both hang under the root key `auth` (`auth.backend`, `auth.launch`).
 */

/**
 * What the service reads and writes with its own token, in SMART v2 syntax (permissions in the order c r u d s),
 * checked against what the code does. One scope per resource type, holding every permission the service needs on
 * it: some servers (Medplum under an access policy) apply only the first scope they see for a type, so a second
 * scope for the same type (`.rs` then `.cu`) is silently dropped and its writes answer 403.
 */
export const defaultBackendScopes = [
  // The history retrieval reads the Encounter and the patient, and searches every citable type by patient.
  'system/Patient.rs',
  'system/Encounter.rs',
  'system/Condition.rs',
  'system/Observation.rs',
  'system/MedicationRequest.rs',
  'system/AllergyIntolerance.rs',
  'system/Procedure.rs',
  'system/Immunization.rs',
  // The draft: conditional create (If-None-Exist) is a create plus a search, the earlier notes are read and
  // searched, and a superseded or refreshed draft is updated.
  'system/DocumentReference.crus',
  // Only read: the text of earlier notes kept as a Binary (attachment.url).
  'system/Binary.r',
  // Created with each draft, and searched so a repeated event finds the one already written.
  'system/Provenance.cs',
  // The AI Device the Provenance names: conditional create, so create plus search.
  'system/Device.cs',
  // The service's own Subscription: searched by endpoint, created, read back and updated (re-activation), never deleted.
  'system/Subscription.crus',
  // Never read by the service itself: the AI-Device and AI-Provenance declare meta.profile (fhir.declareProfiles,
  // default true), and Medplum looks that profile up with the writer's own access, refusing the write (403)
  // without this scope. Kept in the defaults so the default settings work there; a site that sets
  // fhir.declareProfiles false may drop it.
  'system/StructureDefinition.rs',
].join(' ');

/**
 * What the review app does with the clinician's token, one scope per resource type for the same reason as the
 * backend scopes. Least privilege: named types, not `patient/*.rs`.
 */
export const defaultLaunchScopes = [
  'launch',
  'openid',
  'fhirUser',
  // The names of the signed-in clinician and of signers: the signed note's heading and the review page say who
  // signed in words, not as Practitioner/<id>. Practitioner is no patient data, hence user/, not patient/.
  'user/Practitioner.r',
  // The banner, and every type a draft can cite (the types the history retrieval reads): citations open by
  // read or vread, never by search.
  'patient/Patient.r',
  'patient/Encounter.r',
  'patient/Condition.r',
  'patient/Observation.r',
  'patient/MedicationRequest.r',
  'patient/AllergyIntolerance.r',
  'patient/Procedure.r',
  'patient/Immunization.r',
  // The drafts are listed (search) and read, edited (update), and in hold mode the signed note reaches the EHR
  // for the first time at sign-off, created with the clinician's token.
  'patient/DocumentReference.crus',
  // Only read: cited notes whose text is kept as a Binary (attachment.url).
  'patient/Binary.r',
  // Each edit, sign-off or rejection is recorded as a Provenance.
  'patient/Provenance.c',
  // Hold mode: the held draft's AI Provenance reaches the EHR at sign-off, written with the clinician's token,
  // and declares meta.profile, which Medplum looks up with that token (see the backend scopes). Conformance
  // resources are no patient's data, hence user/.
  'user/StructureDefinition.rs',
].join(' ');

/** Scopes are written the OAuth way (one space-separated string); a YAML or JSON list is accepted too. */
const scopeList = z.preprocess(
  (value) => (Array.isArray(value) ? value.join(' ') : value),
  z
    .string()
    .transform((value) => value.split(/\s+/).filter(Boolean))
    .pipe(z.array(z.string().regex(/^[\x21\x23-\x5b\x5d-\x7e]+$/, 'is not a valid OAuth scope')).min(1)),
);

const urlList = z.preprocess(
  (value) => (typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean) : value),
  z.array(z.url()).min(1, 'needs at least one FHIR base URL'),
);

const noneModeSchema = z.object({ mode: z.literal('none') }).strict();

const staticModeSchema = z
  .object({
    mode: z.literal('static'),
    /** The bearer token itself (prefer tokenFile or an environment variable over a checked-in file). */
    token: z.string().min(1).optional(),
    /** A file holding the token, read at start. */
    tokenFile: z.string().min(1).optional(),
  })
  .strict()
  .refine((value) => Boolean(value.token) !== Boolean(value.tokenFile), {
    message: 'static mode needs exactly one of token or tokenFile',
  });

const smartBackendModeSchema = z
  .object({
    mode: z.literal('smart-backend'),
    clientId: z.string().min(1),
    /** PEM (PKCS#8, SEC1 or PKCS#1) or JWK private key. Absent: a key pair is generated into the data directory. */
    keyFile: z.string().min(1).optional(),
    /** The `kid` to sign with; defaults to the JWK's own kid or its RFC 7638 thumbprint. */
    keyId: z.string().min(1).optional(),
    alg: z.enum(['ES384', 'RS384']).default('ES384'),
    /**
     * Extra public keys for the JWKS during a rotation (PEM, JWK or JWKS files): publish the next key here before
     * switching keyFile to it, then keep the previous one here until servers' JWKS caches have expired.
     */
    publishedKeyFiles: z
      .preprocess(
        (value) => (typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean) : value),
        z.array(z.string().min(1)),
      )
      .default([]),
    scopes: scopeList.default(defaultBackendScopes.split(' ')),
    /** Skips discovery for servers that do not publish `.well-known/smart-configuration`. */
    tokenUrl: z.url().optional(),
    /** How long the signed assertion is valid; SMART allows at most five minutes. */
    assertionLifetimeSeconds: z.coerce.number().int().min(10).max(300).default(240),
    requestTimeoutMs: z.coerce.number().int().positive().default(10_000),
  })
  .strict();

export const backendAuthConfigSchema = z
  .discriminatedUnion('mode', [noneModeSchema, staticModeSchema, smartBackendModeSchema])
  .prefault({ mode: 'none' });

const cookieSchema = z
  .object({
    /** Defaults to `__Host-ehr-draft-session` when secure, `ehr-draft-session` otherwise. */
    name: z
      .string()
      .regex(/^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/)
      .optional(),
    /**
     * Production (the default) runs inside an EHR iframe: `SameSite=None; Secure; Partitioned`.
     * Local development over plain http: set `secure: false` and `sameSite: lax` (browsers drop Secure
     * cookies on http origins other than localhost, and refuse SameSite=None without Secure).
     */
    secure: z.stringbool().or(z.boolean()).default(true),
    sameSite: z.enum(['none', 'lax', 'strict']).default('none'),
    /** CHIPS: keeps the cookie working in an EHR iframe when the browser blocks third-party cookies. */
    partitioned: z.stringbool().or(z.boolean()).default(true),
  })
  .strict()
  .refine((cookie) => cookie.secure || cookie.sameSite !== 'none', {
    message: 'sameSite "none" requires secure cookies (for local development set sameSite: lax)',
  });

export const smartLaunchConfigSchema = z
  .object({
    clientId: z.string().min(1),
    /** The registered redirect URI; defaults to `<publicUrl>/smart/callback`. */
    redirectUri: z.url().optional(),
    /** FHIR bases allowed as `iss`; a launch naming any other server is refused before any request is made. */
    allowedIssuers: urlList,
    scopes: scopeList.default(defaultLaunchScopes.split(' ')),
    /** Standalone launch asks the server to pick the patient (`launch/patient`) instead of receiving a launch id. */
    standaloneScopes: scopeList.optional(),
    /** Where the browser lands after a successful launch (`?launch=<id>` is appended). */
    reviewPath: z.string().startsWith('/').default('/review'),
    /** public: PKCE only; private_key_jwt: also authenticates with the backend signing key (confidential client). */
    clientAuthentication: z.enum(['public', 'private_key_jwt']).default('public'),
    sessionTtlSeconds: z.coerce.number().int().min(60).max(86_400).default(28_800),
    /** memory: lost on restart; sqlite: `<dataDir>/smart-sessions.sqlite`, survives restarts, shared on one host. */
    sessionStore: z.enum(['memory', 'sqlite']).default('memory'),
    /** How long a FHIR server's smart-configuration is reused between launches (0: fetched on every launch). */
    discoveryCacheSeconds: z.coerce.number().int().min(0).max(86_400).default(300),
    requestTimeoutMs: z.coerce.number().int().positive().default(10_000),
    cookie: cookieSchema.prefault({}),
  })
  .strict();

export const authConfigSchema = z
  .object({
    backend: backendAuthConfigSchema,
    /** Absent: no SMART launch (the review app is off). */
    launch: smartLaunchConfigSchema.optional(),
  })
  .strict()
  .prefault({});

export type BackendAuthConfig = z.infer<typeof backendAuthConfigSchema>;
export type SmartBackendAuthConfig = z.infer<typeof smartBackendModeSchema>;
export type SmartLaunchConfig = z.infer<typeof smartLaunchConfigSchema>;
export type SessionCookieConfig = z.infer<typeof cookieSchema>;
export type AuthConfig = z.infer<typeof authConfigSchema>;
