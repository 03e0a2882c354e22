import path from 'node:path';
import type { Encounter, Patient } from 'fhir/r4.js';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import type { DraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import type { DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { type AuthConfig, backendAuthConfigSchema } from '../config/auth-config.ts';
import type { ServiceConfig } from '../config/config-schema.ts';
import { readOrCreateSecretFile } from '../config/operator-secrets.ts';
import { patientIntakeConfigSchema } from '../config/patient-intake-config.ts';
import { patientIntakeLaunchRouter } from '../http/patient-intake-launch.ts';
import { patientIntakeRouter } from '../http/patient-intake-routes.ts';
import type { IntakeStateStore } from '../intake/intake-state-store.ts';
import { sharedRateLimit } from '../intake/rate-limiter.ts';
import type { Logger } from '../log.ts';
import type { ModelProvider } from '../model/provider.ts';
import type { EncounterJob, EncounterJobInput } from '../queue/job-queue.ts';
import type { VisitUrgency } from '../rules/evaluate.ts';
import { urgencyFromFlags } from './care-team-alert.ts';
import { LinkSealer } from './invitation-token.ts';
import { PatientIntake } from './patient-intake-service.ts';

/**
 * Pre-visit intake wired for the composition root: whether it is on (unset: on in the sandbox, off against a
 * real EHR), the scopes its writes need, its secret (configured; in the sandbox generated once into the data
 * folder), the invitation on each visit event, its page router, and the briefing redrafted once the answers
 * are in the EHR.
 */
export function patientIntakeEnabled(config: ServiceConfig, sandbox: boolean): boolean {
  return config.patientIntake.enabled ?? sandbox;
}

/**
 * What the intake does with the service's own token: answers written by conditional create and found again
 * (QuestionnaireResponse.crs), invitations (Communication.cs) and urgent Flags (Flag.cs) the same way; the
 * briefing reads both back; a booked Appointment is read again on its event. One scope per type, added only for
 * types the configured list does not name yet.
 */
const patientIntakeScopes = [
  'system/QuestionnaireResponse.crs',
  'system/Communication.cs',
  'system/Flag.cs',
  'system/Appointment.rs',
];

/** What the review app reads with the clinician's token: the answers and the flag a briefing cites. */
export const patientIntakeLaunchScopes = ['patient/QuestionnaireResponse.r', 'patient/Flag.r'];

export function patientIntakeAuth(
  config: ServiceConfig,
  options: { sandbox: boolean; sandboxClientId?: string },
): AuthConfig {
  const auth = config.auth;
  if (!patientIntakeEnabled(config, options.sandbox)) return auth;
  let backend = auth.backend;
  // The sandbox registers a mode-none service with its own client id: register it with the intake's scopes too.
  if (backend.mode === 'none' && options.sandboxClientId)
    backend = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: options.sandboxClientId });
  const launch = auth.launch
    ? { ...auth.launch, scopes: withScopes(auth.launch.scopes, patientIntakeLaunchScopes) }
    : undefined;
  if (backend.mode !== 'smart-backend') return { ...auth, launch };
  return {
    ...auth,
    launch,
    backend: { ...backend, scopes: withScopes(backend.scopes, patientIntakeScopes) },
  };
}

/** The scopes plus those for types they do not name yet (one scope per type, as Medplum needs). */
function withScopes(scopes: string[], wanted: string[]): string[] {
  const typeOf = (scope: string) => /^[a-z]+\/([A-Za-z*]+)\./.exec(scope)?.[1];
  const named = new Set(scopes.map(typeOf));
  return [...scopes, ...wanted.filter((scope) => !named.has(typeOf(scope)))];
}

/** The sandbox's own registration of the intake as a standalone patient app. */
export const sandboxIntakeClientId = 'ehr-draft-agent-intake';

export interface PatientIntakeLaunchSettings {
  clientId: string;
  allowedIssuers: string[];
  scopes: string[];
  redirectUri: string;
}

/**
 * The standalone patient launch: as configured (`patientIntake.launch`), or in the sandbox its own client for the
 * sandbox's FHIR server (registered there by the composition root, as a portal's EHR administrator would).
 */
export function patientIntakeLaunchSettings(
  config: ServiceConfig,
  options: { sandbox: boolean; publicUrl: string; fhirBaseUrl: string },
): PatientIntakeLaunchSettings | undefined {
  if (!patientIntakeEnabled(config, options.sandbox)) return undefined;
  const launch =
    config.patientIntake.launch ??
    (options.sandbox
      ? patientIntakeConfigSchema.shape.launch.parse({
          clientId: sandboxIntakeClientId,
          allowedIssuers: [options.fhirBaseUrl],
        })
      : undefined);
  if (!launch) return undefined;
  return {
    clientId: launch.clientId,
    allowedIssuers: launch.allowedIssuers,
    scopes: launch.scopes,
    redirectUri: launch.redirectUri ?? `${options.publicUrl}/intake/callback`,
  };
}

export interface PatientIntakeWiring {
  intake: PatientIntake;
  router: ReturnType<typeof patientIntakeRouter>;
  /** Resource types the briefing reads besides the history: the answers and the care-team Flag. */
  historyTypes: readonly string[];
  /** What the patient reported as urgent for a visit (its open Flags), for the CDS Hooks urgency card. */
  reportedUrgency(query: { patientId: string; encounterId?: string }): Promise<VisitUrgency | undefined>;
  /** Before each encounter job: invite when the visit is booked. Never fails the job. */
  onEncounterJob(job: EncounterJob): Promise<void>;
  /**
   * Appointment events from any source (a hint: each Appointment is read again): invite when booked. Called
   * after the notification was answered; failures are logged, and the next event for it tries again.
   */
  onAppointmentEvents(appointmentIds: string[]): Promise<void>;
}

export function startPatientIntake(
  config: ServiceConfig,
  dependencies: {
    sandbox: boolean;
    dataDir: string;
    publicUrl: string;
    fhir: FhirClient;
    logger: Logger;
    modelProvider: ModelProvider | undefined;
    writer: Pick<DraftNoteWriter, 'currentDraft'>;
    draftLifecycle: Pick<DraftLifecycle, 'regenerateDraft'>;
    enqueue: (jobs: EncounterJobInput[]) => Promise<void>;
    /** The shared database's rate buckets (replicas): per-link and per-address limits hold across them. */
    rateLimitStore?: Pick<IntakeStateStore, 'takeToken'>;
  },
): PatientIntakeWiring | undefined {
  if (!patientIntakeEnabled(config, dependencies.sandbox)) return undefined;
  const { fhir, logger } = dependencies;
  const secret =
    config.patientIntake.secret ??
    (dependencies.sandbox
      ? readOrCreateSecretFile(path.join(dependencies.dataDir, 'patient-intake-secret'))
      : undefined);
  // The schema refuses this already; kept so no path ever signs links with a missing secret.
  if (!secret) throw new Error('patientIntake.secret is required outside the sandbox');

  /** The briefing again, now with the answers; a draft a clinician has taken over is left as it is. */
  async function refreshBriefing(written: { patientId: string; encounterId?: string }): Promise<void> {
    // An Appointment no Encounter names yet: the briefing drafted for its Encounter later reads the answers then.
    if (!written.encounterId) return;
    const encounter = await fhir.read<Encounter>('Encounter', written.encounterId);
    const kind = config.triggers[encounter.status];
    if (kind !== 'previsit-briefing') return;
    const patient: Patient = { resourceType: 'Patient', id: written.patientId };
    const existing = await dependencies.writer.currentDraft(patient, encounter, kind);
    if (existing?.touched) {
      logger.info({ encounterId: written.encounterId }, 'intake-briefing-kept-clinician-has-it');
      return;
    }
    if (existing) await dependencies.draftLifecycle.regenerateDraft(existing.location.id);
    else await dependencies.enqueue([{ encounterId: written.encounterId, kind, source: 'regenerate' }]);
  }

  const intake = new PatientIntake({
    config: config.patientIntake,
    secret,
    fhir,
    publicUrl: dependencies.publicUrl,
    logger,
    ...(dependencies.modelProvider && config.patientIntake.maxFollowUpQuestions > 0
      ? { model: { provider: dependencies.modelProvider, prompts: PromptLibrary.load() } }
      : {}),
    onAnswersWritten: refreshBriefing,
  });
  const launch = patientIntakeLaunchSettings(config, {
    sandbox: dependencies.sandbox,
    publicUrl: dependencies.publicUrl,
    fhirBaseUrl: fhir.baseUrl,
  });
  return {
    intake,
    router: patientIntakeRouter({
      intake,
      logger,
      ...(launch
        ? {
            standaloneLaunch: patientIntakeLaunchRouter({
              intake,
              logger,
              ...launch,
              sealer: new LinkSealer(secret, 'patient-intake-launch'),
            }),
          }
        : {}),
      rateLimit: config.patientIntake.rateLimit,
      ...(dependencies.rateLimitStore
        ? {
            rateLimits: {
              perLink: sharedRateLimit(
                dependencies.rateLimitStore,
                'intake-link',
                config.patientIntake.rateLimit.perLinkPerMinute,
              ),
              perAddress: sharedRateLimit(
                dependencies.rateLimitStore,
                'intake-address',
                config.patientIntake.rateLimit.perAddressPerMinute,
              ),
            },
          }
        : {}),
    }),
    historyTypes: ['QuestionnaireResponse', 'Flag'],
    reportedUrgency: (query) => urgencyFromFlags(fhir, query, config.patientIntake.identifierSystem),
    async onEncounterJob(job) {
      if (job.source === 'regenerate') return;
      try {
        await intake.inviteForEncounter(job.encounterId);
      } catch (error) {
        // The briefing goes ahead; the next event for the visit tries the invitation again.
        logger.warn(
          { encounterId: job.encounterId, error: (error as Error).message.slice(0, 200) },
          'intake-invitation-failed',
        );
      }
    },
    async onAppointmentEvents(appointmentIds) {
      for (const appointmentId of new Set(appointmentIds)) {
        try {
          await intake.inviteForAppointment(appointmentId);
        } catch (error) {
          logger.warn(
            { appointmentId, error: (error as Error).message.slice(0, 200) },
            'intake-invitation-failed',
          );
        }
      }
    },
  };
}
