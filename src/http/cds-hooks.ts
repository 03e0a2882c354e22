import express, { type NextFunction, type Request, type Response, Router } from 'express';
import type { Patient } from 'fhir/r4.js';
import { z } from 'zod';
import { normalizeOperationOutcome, outcome } from '../../fhir/operation-outcome.ts';
import { isDeceased } from '../../fhir/patient-death.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { Logger } from '../log.ts';
import { type CdsCard, nudgeCard, snoozeDays, urgencyCard } from '../rules/cds-cards.ts';
import {
  type CdsServiceDefinition,
  cdsServicesFor,
  recordFromPrefetch,
  triggerForHook,
} from '../rules/cds-services.ts';
import { evaluateRules, type Nudge, type VisitUrgency } from '../rules/evaluate.ts';
import type { NudgeStore } from '../rules/nudge-store.ts';
import type { RuleSet } from '../rules/rule-set.ts';
import { bodyReadFailure } from './errors.ts';

/**
 * CDS Hooks 2.0: discovery, the two services (patient-view, encounter-start) and feedback.
 * Drafted nudges are served when the pipeline has them; otherwise rules run live on the prefetch
 * (or on a record fetched through the injected function) within a time budget. The router knows
 * no FHIR client: the composition root passes `fetchPatientRecord`.
 */
export interface PatientRecordRequest {
  patientId: string;
  encounterId?: string;
  /** The EHR's FHIR base and access token from the hook request, when it sent them. */
  fhirServer?: string;
  fhirAuthorization?: { access_token: string; token_type: string; scope?: string };
  signal: AbortSignal;
}

export interface DraftedNudges {
  nudges: Nudge[];
  urgency?: VisitUrgency;
}

export interface CdsHooksOptions {
  ruleSet: () => RuleSet;
  store: NudgeStore;
  reviewAppUrl: string;
  timeBudgetMs: number;
  logger: Logger;
  fetchPatientRecord?: (request: PatientRecordRequest) => Promise<PatientRecord>;
  /**
   * Reads the context Patient when the prefetch did not carry it, so drafted cards are not served for a
   * patient who has died. Absent, or failing: drafted cards are served unchecked (live evaluation still
   * checks the Patient of the record it reads).
   */
  readPatient?: (request: PatientRecordRequest) => Promise<Patient>;
  findDraftedNudges?: (query: {
    patientId: string;
    encounterId?: string;
  }) => Promise<DraftedNudges | undefined>;
  /**
   * Urgency raised outside the rules (a patient's urgent pre-visit answer, flagged to the care team): merged into
   * the visit's urgency card. Failing: the cards are served without it.
   */
  patientReportedUrgency?: (query: {
    patientId: string;
    encounterId?: string;
  }) => Promise<VisitUrgency | undefined>;
  /** Called for every valid hook request before cards are made (encounter-start queues a briefing). */
  onHook?: (hook: string, context: Record<string, unknown>) => Promise<void>;
  /** Checks the CDS client's JWT (Authorization header); absent: every caller is accepted. */
  authenticate?: (authorization: string | undefined) => Promise<boolean>;
  now?: () => Date;
  maxBodyBytes?: number;
}

const hookRequestSchema = z.object({
  hook: z.string().min(1),
  hookInstance: z.string().min(1),
  fhirServer: z.url().optional(),
  fhirAuthorization: z
    .object({ access_token: z.string().min(1), token_type: z.string().min(1), scope: z.string().optional() })
    .loose()
    .optional(),
  context: z
    .object({
      patientId: z.string().min(1).max(64),
      encounterId: z.string().min(1).max(64).optional(),
      userId: z.string().optional(),
    })
    .loose(),
  prefetch: z.record(z.string(), z.unknown()).optional(),
});

const feedbackSchema = z.object({
  feedback: z
    .array(
      z.object({
        card: z.string().min(1),
        outcome: z.enum(['accepted', 'overridden']),
        acceptedSuggestions: z.array(z.object({ id: z.string() }).loose()).optional(),
        overrideReason: z
          .object({
            reason: z
              .object({
                code: z.string().optional(),
                system: z.string().optional(),
                display: z.string().optional(),
              })
              .loose()
              .optional(),
            userComment: z.string().max(2000).optional(),
          })
          .optional(),
        outcomeTimestamp: z.iso.datetime({ offset: true }),
      }),
    )
    .min(1)
    .max(100),
});

export function createCdsHooksRouter(options: CdsHooksOptions): Router {
  const router = Router();
  const now = options.now ?? (() => new Date());
  // Prefetch templates follow the serving rule set (what its CQL reads), so they are looked up per request.
  const serviceById = (id: string) => cdsServicesFor(options.ruleSet()).find((service) => service.id === id);

  router.use('/cds-services', (request, response, next) => {
    // CDS clients are often browser apps on the EHR's origin: CORS is part of the CDS Hooks spec.
    response.setHeader('Access-Control-Allow-Origin', '*');
    response.setHeader('Access-Control-Allow-Headers', 'Authorization, Content-Type');
    response.setHeader('Access-Control-Allow-Methods', 'GET, POST, OPTIONS');
    if (request.method === 'OPTIONS') {
      response.status(204).end();
      return;
    }
    next();
  });
  router.use(
    '/cds-services',
    express.json({
      limit: options.maxBodyBytes ?? 5_000_000,
      type: ['application/json', 'application/*+json'],
    }),
  );
  router.use('/cds-services', async (request, response, next) => {
    if (!options.authenticate || request.method === 'GET') return next();
    try {
      if (await options.authenticate(request.get('authorization'))) return next();
    } catch {
      // fall through to 401: a failing verifier must not let a request in
    }
    response.status(401).json(outcome('login', 'CDS client not authenticated'));
  });

  router.get('/cds-services', (_request, response) => {
    response.json({ services: cdsServicesFor(options.ruleSet()) });
  });

  router.post('/cds-services/:id', async (request, response, next) => {
    try {
      const service = serviceById(String(request.params.id));
      if (!service) {
        response.status(404).json(outcome('not-found', `unknown CDS service ${request.params.id}`));
        return;
      }
      const parsed = hookRequestSchema.safeParse(request.body);
      if (!parsed.success) {
        response
          .status(400)
          .json(outcome('invalid', `invalid hook request: ${parsed.error.issues[0]?.message ?? 'bad body'}`));
        return;
      }
      if (parsed.data.hook !== service.hook) {
        response
          .status(400)
          .json(outcome('invalid', `service ${service.id} answers ${service.hook}, not ${parsed.data.hook}`));
        return;
      }
      await options.onHook?.(parsed.data.hook, parsed.data.context);
      const cards = await cardsFor(service, parsed.data, options, now());
      response.json({ cards });
    } catch (error) {
      next(error);
    }
  });

  router.post('/cds-services/:id/feedback', async (request, response, next) => {
    try {
      if (!serviceById(String(request.params.id))) {
        response.status(404).json(outcome('not-found', `unknown CDS service ${request.params.id}`));
        return;
      }
      const parsed = feedbackSchema.safeParse(request.body);
      if (!parsed.success) {
        response
          .status(400)
          .json(outcome('invalid', `invalid feedback: ${parsed.error.issues[0]?.message ?? 'bad body'}`));
        return;
      }
      let recorded = 0;
      for (const item of parsed.data.feedback) {
        const delivery = await options.store.findDelivery(item.card);
        if (!delivery) continue;
        const reason = item.overrideReason
          ? [
              item.overrideReason.reason?.display ?? item.overrideReason.reason?.code,
              item.overrideReason.userComment,
            ]
              .filter((part) => part && part.trim() !== '')
              .join(': ')
          : undefined;
        await options.store.recordOutcome({
          nudgeId: item.card,
          outcome: item.outcome,
          reason: item.outcome === 'overridden' ? reason || undefined : undefined,
          source: 'cds-hooks',
          recordedAt: new Date(item.outcomeTimestamp),
        });
        // "Not now, for N days": suppression holds this rule back for this patient until then.
        const days = item.outcome === 'overridden' ? snoozeDays(item.overrideReason?.reason) : undefined;
        if (days !== undefined) {
          const answeredAt = new Date(item.outcomeTimestamp);
          await options.store.recordSnooze({
            ruleId: delivery.ruleId,
            patientId: delivery.patientId,
            nudgeId: item.card,
            recordedAt: answeredAt,
            until: new Date(answeredAt.getTime() + days * 86_400_000),
          });
        }
        recorded += 1;
      }
      options.logger.info(
        { service: request.params.id, received: parsed.data.feedback.length, recorded },
        'cds feedback',
      );
      response.status(200).json({});
    } catch (error) {
      next(error);
    }
  });

  router.use(
    '/cds-services',
    (error: unknown, _request: Request, response: Response, _next: NextFunction) => {
      // Bad JSON, bad gzip, too large, an unknown encoding, a client gone: each the parser's own 4xx.
      const bodyFailure = bodyReadFailure(error);
      if (bodyFailure) {
        response.status(bodyFailure.error.status).json(bodyFailure.error.outcome);
        return;
      }
      const normalized = normalizeOperationOutcome(error);
      options.logger.error(
        { err: normalized.message, status: normalized.status },
        'cds hooks request failed',
      );
      // 5xx details stay in the log; the client gets a generic outcome.
      response
        .status(normalized.status)
        .json(normalized.status >= 500 ? outcome('exception', 'CDS service failed') : normalized.outcome);
    },
  );

  return router;
}

async function cardsFor(
  service: CdsServiceDefinition,
  request: z.infer<typeof hookRequestSchema>,
  options: CdsHooksOptions,
  now: Date,
): Promise<CdsCard[]> {
  const { patientId, encounterId } = request.context;
  const cardContext = { reviewAppUrl: options.reviewAppUrl, patientId, encounterId };
  // No briefing and no nudge for a patient who has died: screening, follow-up and urgency cards prepare care
  // that will not happen, and would be a distressing thing to show beside a deceased patient's chart.
  const patient = await contextPatient(request, options);
  if (patient && isDeceased(patient)) return noCardsForDeceased(service, options);
  const reported = await options.patientReportedUrgency?.({ patientId, encounterId }).catch(() => undefined);
  const drafted = await options.findDraftedNudges?.({ patientId, encounterId });
  if (drafted && drafted.nudges.length > 0) {
    for (const nudge of drafted.nudges) {
      await options.store.recordDelivery({
        nudgeId: nudge.id,
        ruleId: nudge.ruleId,
        ruleVersion: nudge.ruleVersion,
        patientId,
        occasionId: nudge.occasionId,
        deliveredAt: now,
      });
    }
    return withUrgency(
      drafted.nudges.map((nudge) => nudgeCard(nudge, cardContext)),
      mergedUrgency(drafted.urgency, reported),
      cardContext,
    );
  }

  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  const budget = new Promise<'over-budget'>((resolve) => {
    timer = setTimeout(() => {
      controller.abort();
      resolve('over-budget');
    }, options.timeBudgetMs);
  });
  const live = (async () => {
    const record =
      recordFromPrefetch(service, request.prefetch, { patientId, encounterId }) ??
      (await options.fetchPatientRecord?.({
        patientId,
        encounterId,
        fhirServer: request.fhirServer,
        fhirAuthorization: request.fhirAuthorization,
        signal: controller.signal,
      }));
    if (!record) return undefined;
    if (controller.signal.aborted) return 'over-budget' as const;
    if (isDeceased(record.patient)) return 'deceased' as const;
    return evaluateRules(options.ruleSet(), record, {
      trigger: triggerForHook(service.hook),
      now,
      store: options.store,
      // A patient-view stands for the day: looking at the chart twice is one occasion, not two.
      occasionId: encounterId ?? `patient-view:${now.toISOString().slice(0, 10)}`,
    });
  })();
  try {
    const result = await Promise.race([live, budget]).catch((error: unknown) => {
      // The EHR's screen must not break because a nudge could not be computed.
      options.logger.warn(
        { service: service.id, err: error instanceof Error ? error.message : String(error) },
        'cds live evaluation failed',
      );
      return 'failed' as const;
    });
    if (result === 'failed') return [];
    if (result === 'deceased') return noCardsForDeceased(service, options);
    if (result === 'over-budget') {
      options.logger.warn(
        { service: service.id, budgetMs: options.timeBudgetMs },
        'cds live evaluation over its time budget',
      );
      return [];
    }
    if (!result) {
      options.logger.warn(
        { service: service.id },
        'cds request without complete prefetch and no way to fetch the record',
      );
      return [];
    }
    const failed = result.results.filter((rule) => rule.status === 'error');
    if (failed.length > 0)
      options.logger.warn({ rules: failed.map((rule) => rule.ruleId) }, 'rules failed during cds evaluation');
    return withUrgency(
      result.nudges.map((nudge) => nudgeCard(nudge, cardContext)),
      mergedUrgency(result.urgency, reported),
      cardContext,
    );
  } finally {
    clearTimeout(timer);
  }
}

/** The context Patient, from the prefetch (when it is that patient) or read; undefined when neither can say. */
async function contextPatient(
  request: z.infer<typeof hookRequestSchema>,
  options: CdsHooksOptions,
): Promise<Patient | undefined> {
  const { patientId, encounterId } = request.context;
  const prefetched = request.prefetch?.patient as Partial<Patient> | null | undefined;
  if (prefetched?.resourceType === 'Patient' && prefetched.id === patientId) return prefetched as Patient;
  if (!options.readPatient) return undefined;
  const controller = new AbortController();
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      options.readPatient({
        patientId,
        encounterId,
        fhirServer: request.fhirServer,
        fhirAuthorization: request.fhirAuthorization,
        signal: controller.signal,
      }),
      new Promise<undefined>((resolve) => {
        timer = setTimeout(() => {
          controller.abort();
          resolve(undefined);
        }, options.timeBudgetMs);
      }),
    ]);
  } catch (error) {
    // The status only: a server's diagnostics may repeat what it was asked about.
    options.logger.warn(
      { hook: request.hook, status: normalizeOperationOutcome(error).status },
      'cds could not read the context patient',
    );
    return undefined;
  } finally {
    clearTimeout(timer);
  }
}

function noCardsForDeceased(service: CdsServiceDefinition, options: CdsHooksOptions): CdsCard[] {
  // Ids and outcome only: the patient's id is in the EHR's own request log, not repeated here.
  options.logger.info({ service: service.id, outcome: 'patient-deceased' }, 'cds no cards');
  return [];
}

/** The higher level of the two, with every reason; the patient's own report first. */
function mergedUrgency(
  rules: VisitUrgency | undefined,
  reported: VisitUrgency | undefined,
): VisitUrgency | undefined {
  if (!rules || !reported) return rules ?? reported;
  const order = ['routine', 'soon', 'urgent'];
  const level = order.indexOf(reported.level) > order.indexOf(rules.level) ? reported.level : rules.level;
  return { level, reasons: [...reported.reasons, ...rules.reasons] };
}

function withUrgency(
  cards: CdsCard[],
  urgency: VisitUrgency | undefined,
  context: Parameters<typeof urgencyCard>[1],
): CdsCard[] {
  const card = urgency ? urgencyCard(urgency, context) : undefined;
  return card ? [card, ...cards] : cards;
}
