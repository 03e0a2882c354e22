import { mkdirSync } from 'node:fs';
import type { Server } from 'node:http';
import path from 'node:path';
import type { Encounter, Patient } from 'fhir/r4.js';
import { contentPolicyOf } from '../agents/clinical-content-policy.ts';
import { FhirAuthenticationHealth } from '../fhir/authentication-health.ts';
import { createDraftLifecycle, type DraftLifecycle } from '../fhir/draft-lifecycle.ts';
import { DraftNoteWriter } from '../fhir/draft-note.ts';
import { FhirClient } from '../fhir/fhir-client.ts';
import { outcomeError } from '../fhir/operation-outcome.ts';
import { retrievePatientRecordInContext } from '../fhir/patient-history.ts';
import { createAccessTokenProvider } from '../fhir/smart-backend-auth.ts';
import type { ServiceConfig } from './config/config-schema.ts';
import { resolveOperatorSecrets } from './config/operator-secrets.ts';
import { createDraftEngine } from './draft-engine-factory.ts';
import { schedulePurge } from './drafts/purge-schedule.ts';
import { SqlDraftStore, SqliteDraftStore } from './drafts/sqlite-draft-store.ts';
import { createApp } from './http/app.ts';
import { cdsClientAuthenticator } from './http/cds-client-auth.ts';
import { createCdsHooksRouter } from './http/cds-hooks.ts';
import { reviewAppRouters } from './http/review-app.ts';
import { rulesApiRouter } from './http/rules-api-routes.ts';
import { sandboxAuthorizationRouter } from './http/sandbox-authorization-routes.ts';
import { sandboxRouter } from './http/sandbox-routes.ts';
import { createSmartLaunch } from './http/smart-launch.ts';
import { SqlSessionStore } from './http/sqlite-session-store.ts';
import { configurationVersion } from './intake/configuration-version.ts';
import { IntakeService } from './intake/intake-service.ts';
import type { Logger } from './log.ts';
import { createMetrics, observeRuleSet } from './metrics.ts';
import {
  patientIntakeAuth,
  patientIntakeEnabled,
  patientIntakeLaunchScopes,
  patientIntakeLaunchSettings,
  startPatientIntake,
} from './patient-intake/wiring.ts';
import { processEncounterJob } from './pipeline/process-encounter-job.ts';
import {
  createRecordImagesStage,
  imagingLaunchScopes,
  reviewImagingOptions,
  withImagingScopes,
} from './pipeline/record-images-stage.ts';
import { WorkerPool } from './pipeline/worker-pool.ts';
import type { EncounterJobInput, JobQueue } from './queue/job-queue.ts';
import { openJobQueue } from './queue/open-job-queue.ts';
import { DraftedNudgeCache, type DraftedNudges, SqlDraftedNudges } from './rules/drafted-nudges.ts';
import { toNudgeInput, triggerForEncounter } from './rules/evaluate.ts';
import { withNudgeOutcomes } from './rules/review-outcomes.ts';
import { summarizeRuleSet } from './rules/rule-set.ts';
import { createRulesRuntime } from './rules/rules-runtime.ts';
import { SqlNudgeStore } from './rules/sqlite-nudge-store.ts';
import type { SandboxEhr } from './sandbox/sandbox-ehr.ts';
import { obtainFirstToken } from './startup-token.ts';
import { effectiveQueueConfig, openStorage } from './storage/open-storage.ts';

/**
 * The composition root: the one place that wires config, queue, FHIR client, engines, rules and HTTP
 * together, and closes them in order on shutdown.
 */
export interface RunningService {
  url: string;
  fhirBaseUrl: string;
  queue: JobQueue;
  /** The embedded sandbox EHR, when no FHIR server is configured. */
  sandbox: SandboxEhr | undefined;
  /** The secret notifications must carry (configured, or generated for the sandbox). */
  notifySecret: string;
  /** The bearer the operator APIs (/api/jobs) need (configured, or generated into the sandbox's data directory). */
  adminSecret: string;
  /** Where the sandbox keeps a generated admin secret (for the start-up banner). */
  adminSecretFile: string | undefined;
  /** Edit, sign, reject, regenerate drafts (the review app rebinds it per request with `withClient`). */
  draftLifecycle: DraftLifecycle;
  close(): Promise<void>;
}

function listen(app: ReturnType<typeof createApp>, port: number, host: string): Promise<Server> {
  return new Promise((resolve, reject) => {
    const server = app.listen(port, host, (error?: Error) => (error ? reject(error) : resolve(server)));
  });
}

/**
 * Who may call the CDS services: the listed EHRs (JWTs against their JWKS); nobody without a JWT against a
 * real EHR unless a site opts out explicitly; anyone only in the embedded sandbox.
 */
function cdsHookAuthentication(
  config: ServiceConfig,
  serviceUrl: string,
  logger: Logger,
): ((authorization: string | undefined) => Promise<boolean>) | undefined {
  const { clients, allowUnauthenticated } = config.rules.cdsHooks;
  if (clients.length > 0) return cdsClientAuthenticator(clients, serviceUrl);
  if (!config.fhir.baseUrl) return undefined;
  if (allowUnauthenticated) {
    logger.warn(
      'cds-hooks-open: rules.cdsHooks.allowUnauthenticated is set, so any caller that reaches /cds-services can ask for cards and queue briefings',
    );
    return undefined;
  }
  logger.warn('cds-hooks-closed: no rules.cdsHooks.clients are listed, so every hook call is refused (401)');
  return async () => false;
}

export async function startService(config: ServiceConfig, logger: Logger): Promise<RunningService> {
  const dataDir = path.resolve(config.dataDir);
  // The data directory holds patient data (queued jobs, held drafts): private to the service's user.
  mkdirSync(dataDir, { recursive: true, mode: 0o700 });

  // One storage setting: with PostgreSQL every store and the queue are shared by the replicas.
  const storage = await openStorage(config, logger);
  const queue = await openJobQueue(effectiveQueueConfig(config), dataDir).catch(async (error: unknown) => {
    await storage.close();
    throw error;
  });
  const metrics = createMetrics(queue);
  let ready = false;
  let workers: WorkerPool | undefined;
  // Why the service is not ready although started: waiting for the token endpoint, or its token refused.
  let waitingForToken: string | undefined;
  let authenticationHealth: FhirAuthenticationHealth | undefined;

  // No FHIR server configured: an embedded sandbox EHR with synthetic patients stands in for one.
  let sandbox: SandboxEhr | undefined;
  if (!config.fhir.baseUrl) {
    // Loaded only in sandbox mode: a deployment against a real EHR does not carry the FHIR engine.
    const [{ createSandboxEhr }, { generatePatients }] = await Promise.all([
      import('./sandbox/sandbox-ehr.ts'),
      import('./sandbox/synthetic-patients.ts'),
    ]);
    sandbox = createSandboxEhr({
      logger,
      subscriptions: { allowedEndpoints: config.sandbox.subscriptionEndpoints },
      auth: config.sandbox.auth,
    });
    const patients = generatePatients({ count: config.sandbox.patients, seed: config.sandbox.seed });
    await sandbox.seed(patients.flatMap((patient) => patient.resources));
  }
  // No door is open: /notify and the operator APIs need secrets (generated only in the sandbox).
  const { notifySecret, adminSecret, adminSecretFile } = resolveOperatorSecrets(config, {
    sandbox: Boolean(sandbox),
    dataDir,
  });
  const intake = await IntakeService.open({
    config: config.intake,
    dataDir,
    database: storage.database,
    leadership: storage.leadership,
    queue,
    logger,
    metrics,
    onQueued: () => workers?.nudge(),
  });

  const app = createApp({
    queue,
    logger,
    notifySecret,
    adminSecret,
    maxBodyBytes: config.notify.maxBodyBytes,
    trustProxy: config.http.trustProxy,
    isReady: () => ready,
    notReadyReason: () => waitingForToken ?? authenticationHealth?.problem,
    // Still ready while the Subscription is unconfirmed: polling covers; the detail says which it is.
    readinessDetails: () => intake.readiness(),
    onQueued: () => workers?.nudge(),
    metrics,
    notify: intake.notifyOptions(),
    routers: sandbox ? [{ path: '/sandbox/fhir', router: sandboxRouter(sandbox) }] : [],
  });
  const server = await listen(app, config.port, config.host);
  const address = server.address();
  const port = typeof address === 'object' && address ? address.port : config.port;
  const url = config.publicUrl ?? `http://${config.host === '0.0.0.0' ? 'localhost' : config.host}:${port}`;
  const fhirBaseUrl = config.fhir.baseUrl ?? `${url}/sandbox/fhir`;
  sandbox?.setBaseUrl(fhirBaseUrl);
  // The sandbox notifies only endpoints allowed exactly (none by default): ours, wherever PUBLIC_URL points.
  sandbox?.allowSubscriptionEndpoint(`${url}/notify`);

  // The sandbox is a strict hospital: its SMART authorization server, with the service registered as a Backend
  // Services client and the review app as a launch client, so the demo takes the path a hospital does.
  let auth = withImagingScopes(patientIntakeAuth(config, { sandbox: Boolean(sandbox) }), config);
  if (sandbox) {
    const [{ attachSandboxAuthorization }, { registerServiceWithSandbox, sandboxBackendClientId }] =
      await Promise.all([
        import('./sandbox/authorization/sandbox-authorization.ts'),
        import('./sandbox/authorization/service-clients.ts'),
      ]);
    const authorization = await attachSandboxAuthorization(sandbox, {
      issuer: `${url}/sandbox/auth`,
      fhirBaseUrl,
      logger,
    });
    app.mount('/sandbox/auth', sandboxAuthorizationRouter(authorization));
    auth = registerServiceWithSandbox(authorization, {
      auth: withImagingScopes(
        patientIntakeAuth(config, { sandbox: true, sandboxClientId: sandboxBackendClientId }),
        config,
        sandboxBackendClientId,
      ),
      serviceUrl: url,
      fhirBaseUrl,
      // The review app reads the patient's pre-visit answers and flags that the briefing cites, and the images
      // (thumbnails, the citation view) of a draft that read them.
      extraLaunchScopes: [
        ...(patientIntakeEnabled(config, true) ? patientIntakeLaunchScopes : []),
        ...(config.model.vision ? imagingLaunchScopes : []),
      ],
    });
    // The intake as a standalone patient app, registered as a portal's EHR administrator would.
    const intakeLaunch = patientIntakeLaunchSettings(config, { sandbox: true, publicUrl: url, fhirBaseUrl });
    if (intakeLaunch && !config.patientIntake.launch)
      authorization.registerClient({
        clientId: intakeLaunch.clientId,
        redirectUris: [intakeLaunch.redirectUri],
        scopes: intakeLaunch.scopes,
      });
    // The sandbox EHR's patient list, where a clinician opens the review app from an encounter (a real EHR launch).
    const { sandboxLaunchRouter } = await import('./http/sandbox-launch-page.ts');
    app.mount(
      '/sandbox/launch',
      sandboxLaunchRouter({
        sandbox,
        fhirBaseUrl,
        appLaunchUrl: `${url}/smart/launch`,
        createLaunch: async (context) =>
          authorization.createLaunch({ patient: context.patientId, encounter: context.encounterId }),
        draftIdentifierSystem: config.drafts.identifierSystem,
        ...(patientIntakeEnabled(config, true)
          ? { intakeIdentifierSystem: config.patientIntake.identifierSystem }
          : {}),
      }),
    );
  }

  // The service's own FHIR access: SMART Backend Services, a static token, or none.
  const accessToken = await createAccessTokenProvider(auth.backend, { fhirBaseUrl, dataDir });
  // Clinicians: SMART App Launch, then the review page and its API, acting with the clinician's own token.
  // Mounted before the first token request: its router serves /.well-known/jwks.json, which servers such as
  // Medplum fetch while answering that request.
  const smartLaunch = createSmartLaunch({
    launch: auth.launch,
    publicUrl: url,
    jwks: accessToken.jwks,
    signingKey: accessToken.signingKey,
    dataDir,
    logger,
    ...(storage.database ? { sessionStore: new SqlSessionStore(storage.database) } : {}),
  });
  app.mount('/', smartLaunch.router);
  if (accessToken.mode === 'smart-backend') {
    try {
      // A refused client or a narrower grant stops start-up with one line; an unavailable endpoint is waited for.
      await obtainFirstToken(accessToken, {
        logger,
        onWaiting: (reason) => {
          waitingForToken = reason;
        },
      });
    } catch (error) {
      // Close what is open so the process (or a test) is not held by a listening socket and an open queue.
      const closed = new Promise<void>((resolve) => server.close(() => resolve()));
      server.closeAllConnections();
      await closed;
      await smartLaunch.close();
      await queue.close();
      await intake.stop();
      await storage.close();
      await sandbox?.close();
      throw error;
    }
  }
  authenticationHealth = new FhirAuthenticationHealth({
    endpoint: fhirBaseUrl,
    onChange: (problem) => {
      if (problem) logger.error({ reason: problem }, 'fhir-authentication-failing');
      else logger.info('fhir-authentication-restored');
    },
  });
  const fhir = new FhirClient({
    baseUrl: fhirBaseUrl,
    timeoutMs: config.fhir.timeoutMs,
    maxAttempts: config.fhir.maxAttempts,
    maxPages: config.fhir.maxPages,
    maxResponseBytes: config.fhir.maxResponseBytes,
    // Readiness follows whether the server still takes the service's token (an expired static token, a revoked client).
    accessToken: authenticationHealth.watch(accessToken),
    onAuthentication: authenticationHealth.observe,
  });
  const historyOptions = { draftIdentifierSystem: config.drafts.identifierSystem };
  // The record's images, read by model.vision (MedGemma 4B) while text stays with the drafting model.
  const readImages = createRecordImagesStage(config, fhir, logger);
  // Rules decide which nudges apply (start-up refuses an invalid rule set); the engine only words them.
  const rules = await createRulesRuntime(config.rules, {
    logger,
    dataDirectory: dataDir,
    ...(storage.database ? { store: new SqlNudgeStore(storage.database) } : {}),
    onRuleSet: (change) =>
      observeRuleSet(
        metrics,
        change.outcome === 'loaded'
          ? { outcome: 'loaded', ruleSet: summarizeRuleSet(change.ruleSet) }
          : change,
      ),
  });
  // Operators confirm which rule set serves (fingerprint, versions) with the admin secret.
  app.mount('/api/rules', rulesApiRouter({ adminSecret, ruleSet: () => rules.current() }));
  const draftedNudges: DraftedNudges = storage.database
    ? new SqlDraftedNudges(storage.database)
    : new DraftedNudgeCache();
  // The model (in-process GGUF or the site's inference server), or the model-free extractive engine.
  const engine = await createDraftEngine(config.model, logger);
  const contentPolicy = contentPolicyOf(config.clinicalContent);
  // Drafts go where drafts.mode says: the EHR (write), or the service's own store (hold, shadow).
  const draftStore = storage.database
    ? new SqlDraftStore(storage.database)
    : new SqliteDraftStore(path.join(dataDir, 'drafts.sqlite'));
  const writer = new DraftNoteWriter(fhir, config.drafts.identifierSystem, {
    mode: config.drafts.mode,
    store: draftStore,
    transactions: config.fhir.transactions,
    declareProfiles: config.fhir.declareProfiles,
  });
  const draftLifecycle = createDraftLifecycle({
    mode: config.drafts.mode,
    identifierSystem: config.drafts.identifierSystem,
    store: draftStore,
    transactions: config.fhir.transactions,
    client: fhir,
    serviceClient: fhir,
    // A regeneration is a job of its own: `source: 'regenerate'` lets it past the completed-work ledger.
    requestRegeneration: async (encounterId, kind) => {
      await queue.enqueue([{ encounterId, kind: kind as EncounterJobInput['kind'], source: 'regenerate' }]);
      workers?.nudge();
    },
  });
  // Pre-visit intake: an invitation when a visit is booked, the patient's interview, the answers in the briefing.
  const patientIntake = startPatientIntake(config, {
    sandbox: Boolean(sandbox),
    dataDir,
    publicUrl: url,
    fhir,
    logger,
    modelProvider: engine.provider,
    writer,
    draftLifecycle,
    enqueue: async (jobs) => {
      await queue.enqueue(jobs);
      workers?.nudge();
    },
    // With replicas the intake page's rate limits are shared, as /notify's are.
    ...(storage.database ? { rateLimitStore: intake.store } : {}),
  });
  if (patientIntake) {
    app.mount('/', patientIntake.router);
    intake.intake.handleAppointments(patientIntake.onAppointmentEvents);
  }
  if (auth.launch) {
    for (const { path: mountPath, router } of reviewAppRouters({
      smartLaunch,
      // Sign-off and rejection in the review app are outcomes of the nudges the draft carried.
      lifecycle: withNudgeOutcomes(draftLifecycle, rules.store, logger),
      review: config.review,
      logger,
      fhirTimeoutMs: config.fhir.timeoutMs,
      ...(sandbox ? { launchPageUrl: `${url}/sandbox/launch` } : {}),
      // Pictures of cited ImagingStudies come from the PACS the drafts read.
      ...reviewImagingOptions(config),
    })) {
      app.mount(mountPath, router);
    }
  }
  // CDS Hooks: cards from drafted nudges, or rules evaluated live; encounter-start queues a briefing too.
  app.mount(
    '/',
    createCdsHooksRouter({
      ruleSet: () => rules.current(),
      store: rules.store,
      reviewAppUrl: config.rules.cdsHooks.reviewAppUrl ?? `${url}/smart/launch`,
      timeBudgetMs: config.rules.cdsHooks.timeBudgetMs,
      logger,
      findDraftedNudges: async (query) => draftedNudges.find(query),
      fetchPatientRecord: async ({ patientId, encounterId, fhirServer }) => {
        // The service's own token goes only to its own FHIR server; other servers must send prefetch.
        if (fhirServer && fhirServer.replace(/\/+$/, '') !== fhirBaseUrl) {
          throw outcomeError('forbidden', 'this service reads only its configured FHIR server', 403);
        }
        return retrievePatientRecordInContext(
          fhir,
          { patientId, encounterId },
          { ...historyOptions, additionalTypes: rules.current().additionalResourceTypes },
        );
      },
      // Drafted cards are not served for a deceased patient: the Patient is read when the prefetch lacks it.
      readPatient: async ({ patientId, fhirServer }) => {
        if (fhirServer && fhirServer.replace(/\/+$/, '') !== fhirBaseUrl) {
          throw outcomeError('forbidden', 'this service reads only its configured FHIR server', 403);
        }
        return fhir.read<Patient>('Patient', patientId);
      },
      // A patient's urgent pre-visit answer makes the visit's urgency card critical.
      ...(patientIntake ? { patientReportedUrgency: patientIntake.reportedUrgency } : {}),
      authenticate: cdsHookAuthentication(config, url, logger),
      onHook: async (hook, context) => {
        // The encounter must be the context patient's; its status, not the hook, decides the kind of draft.
        await intake.enqueueFromCdsHook(hook, context, (encounterId) =>
          fhir.read<Encounter>('Encounter', encounterId),
        );
      },
    }),
  );
  const purge = schedulePurge({
    targets: { drafts: draftStore },
    retentionDays: config.drafts.retentionDays,
    schedule: config.drafts.purgeSchedule,
    logger,
    leadership: storage.leadership,
  });
  // Part of every job's idempotency key: the same encounter version is drafted again only after a change here.
  const workConfigurationVersion =
    config.intake.configurationVersion ??
    configurationVersion({
      triggers: config.triggers,
      drafts: config.drafts,
      clinicalContent: config.clinicalContent,
      // Images read (or not) change what a draft says: switching model.vision on drafts encounters again.
      vision: config.model.vision?.model ?? null,
      engine: engine.id,
    });
  workers = new WorkerPool({
    queue,
    concurrency: config.queue.concurrency,
    pollIntervalMs: config.queue.pollIntervalMs,
    logger,
    process: async (job) => {
      // A booked visit's invitation first: it must reach the patient within a minute, whatever the draft takes.
      await patientIntake?.onEncounterJob(job);
      const outcome = await processEncounterJob(job, {
        fhir,
        engine,
        maxAgeDays: config.drafts.maxAgeDays,
        contentPolicy,
        writer,
        triggers: config.triggers,
        draftIdentifierSystem: config.drafts.identifierSystem,
        logger,
        completedWork: queue,
        additionalHistoryTypes: () => [
          ...rules.current().additionalResourceTypes,
          ...(patientIntake?.historyTypes ?? []),
        ],
        ...(readImages ? { readImages } : {}),
        selectNudges: async (record) => {
          const trigger = triggerForEncounter(record.encounter);
          if (!trigger) return [];
          // Suppression reads the patient's earlier deliveries and then records this one: two encounters of
          // one patient drafted at once (on two replicas, or two workers) must not both see none.
          const evaluation = await storage.exclusive(`nudges:${record.patient.id}`, () =>
            rules.evaluate(record, { trigger, occasionId: record.encounter.id }),
          );
          await draftedNudges.remember(
            record.patient.id as string,
            record.encounter.id as string,
            evaluation,
          );
          return evaluation.nudges.map(toNudgeInput);
        },
        configurationVersion: workConfigurationVersion,
      });
      metrics.jobResults.inc({ result: outcome });
      return outcome;
    },
    onSettled: (_job, outcome, durationMs) => {
      metrics.jobAttempts.inc({ outcome });
      metrics.jobDuration.observe({ outcome }, durationMs / 1000);
    },
  });
  workers.start();
  // Our Subscription is ensured on the server (the sandbox honours Subscriptions like a real server).
  await intake.start(fhir, {
    subscription: {
      endpoint: `${url}/notify`,
      secret: notifySecret,
      declareProfiles: config.fhir.declareProfiles,
    },
    // The pre-visit intake invites on a booked Appointment as well as on a planned Encounter.
    ...(patientIntake ? { appointmentCriteria: 'Appointment?status=booked' } : {}),
    schedulePolling: Boolean(config.fhir.baseUrl),
  });
  ready = true;
  logger.info({ url, fhirBaseUrl, sandbox: !config.fhir.baseUrl, engine: engine.id }, 'service-started');

  return {
    url,
    fhirBaseUrl,
    queue,
    sandbox,
    notifySecret,
    adminSecret,
    adminSecretFile,
    draftLifecycle,
    async close() {
      ready = false;
      await new Promise<void>((resolve) => server.close(() => resolve()));
      await intake.stop();
      await workers?.stop();
      await purge.stop();
      await engine.close();
      await rules.close();
      await smartLaunch.close();
      await draftStore.close();
      await queue.close();
      await storage.close();
      await sandbox?.close();
      server.closeAllConnections();
      logger.info('service-stopped');
    },
  };
}
