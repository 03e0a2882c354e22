import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import type { FhirResource, Patient } from 'fhir/r4.js';
import { z } from 'zod';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { normalizeOperationOutcome, outcomeError } from '../../fhir/operation-outcome.ts';
import type { Logger } from '../log.ts';
import {
  barePatientId,
  citationTypePattern,
  describeCitation,
  fhirIdPattern,
  isInPatientCompartment,
} from './citation-view.ts';
import { operationOutcomeErrorHandler } from './errors.ts';
import type { LaunchContext } from './smart-launch.ts';

/**
 * The review app's API under /api/drafts. Every call needs a SMART launch session (401 otherwise); every
 * draft and citation must belong to the patient in that session's token (403 otherwise); state-changing calls
 * need the session's CSRF token (checked by the launch middleware) and a JSON body. All changes go through the
 * draft lifecycle, which records each one as Provenance with the user's own FHIR token.
 */

/** The draft as the lifecycle shows it (fhir/draft-lifecycle.ts). */
export interface DraftView {
  id: string;
  patientId: string;
  encounterId: string | undefined;
  kind: string;
  status: string;
  text: string;
  title: string;
  createdAt: string;
  citations: string[];
  flagged: boolean;
  mode: string;
  /** `Practitioner/<id>` who signed, once final. */
  signedBy?: string;
  /** Set by regenerateDraft: a new draft is queued and will replace this one. */
  regenerationRequested?: boolean;
}

/** The part of the draft lifecycle the API drives (created per request with the user's FHIR token). */
export interface DraftLifecyclePort {
  listDrafts(patientId: string): Promise<DraftView[]>;
  getDraft(draftId: string): Promise<DraftView | undefined>;
  editDraft(draftId: string, text: string, actor: string): Promise<DraftView>;
  signDraft(draftId: string, options: { practitioner: string; text?: string }): Promise<DraftView>;
  rejectDraft(draftId: string, options: { practitioner: string; reason: string }): Promise<DraftView>;
  regenerateDraft(draftId: string): Promise<DraftView>;
}

export interface DraftsApiDependencies {
  /** From the SMART launch (createSmartLaunch): 401 without a session, 403 without CSRF on changes. */
  requireLaunchContext: () => RequestHandler;
  /** The lifecycle acting with this user's token. */
  lifecycleFor: (context: LaunchContext) => DraftLifecyclePort;
  /** The FHIR client acting with this user's token; defaults to {@link userFhirClient}. */
  fhirClientFor?: (context: LaunchContext) => Pick<FhirClient, 'read' | 'get'>;
  logger: Logger;
  /** Largest accepted JSON body; a note is a few KB, so 256 KB is generous. */
  maxBodyBytes?: number;
}

const maxTextCharacters = 100_000;

const editBodySchema = z.object({ text: z.string().trim().min(1).max(maxTextCharacters) }).strict();
const signBodySchema = z
  .object({ text: z.string().trim().min(1).max(maxTextCharacters).optional() })
  .strict();
const rejectBodySchema = z.object({ reason: z.string().trim().min(3).max(2_000) }).strict();
const emptyBodySchema = z.object({}).strict();
const draftIdSchema = z.string().regex(fhirIdPattern);

/** A FhirClient that sends the signed-in user's token (never the service's own) to the launch's FHIR server. */
export function userFhirClient(context: LaunchContext, options: { timeoutMs?: number } = {}): FhirClient {
  return new FhirClient({
    baseUrl: context.fhirBaseUrl,
    timeoutMs: options.timeoutMs ?? 15_000,
    maxAttempts: 2,
    accessToken: { getToken: async () => context.accessToken, invalidate: () => {} },
  });
}

/** `Practitioner/<id>` from the id_token's fhirUser (relative or absolute), or undefined for other user types. */
export function practitionerReference(fhirUser: string | undefined): string | undefined {
  const match = fhirUser ? /(?:^|\/)(Practitioner\/[A-Za-z0-9\-.]{1,64})$/.exec(fhirUser) : null;
  return match ? match[1] : undefined;
}

function parseBody<T>(schema: z.ZodType<T>, body: unknown): T {
  const parsed = schema.safeParse(body ?? {});
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    const where = issue?.path.length ? `${issue.path.join('.')}: ` : '';
    throw outcomeError('invalid', `invalid request body: ${where}${issue?.message ?? 'not accepted'}`, 400);
  }
  return parsed.data;
}

const contextOf = (response: Response) => response.locals.launchContext as LaunchContext;

function requirePractitioner(context: LaunchContext): string {
  const practitioner = practitionerReference(context.fhirUser);
  if (!practitioner) {
    throw outcomeError(
      'forbidden',
      'only a signed-in practitioner (fhirUser Practitioner/<id>) may change drafts',
      403,
    );
  }
  return practitioner;
}

/** Loads the draft and refuses it unless it belongs to the patient in the token. */
async function draftForPatient(
  lifecycle: DraftLifecyclePort,
  context: LaunchContext,
  draftId: string,
): Promise<DraftView> {
  const id = draftIdSchema.safeParse(draftId);
  if (!id.success) throw outcomeError('invalid', 'not a draft id', 400);
  let draft: DraftView | undefined;
  try {
    draft = await lifecycle.getDraft(id.data);
  } catch (error) {
    const failure = normalizeOperationOutcome(error);
    if (failure.status === 404 || failure.status === 410)
      throw outcomeError('not-found', 'no such draft', 404);
    throw failure;
  }
  if (!draft) throw outcomeError('not-found', 'no such draft', 404);
  if (barePatientId(draft.patientId) !== barePatientId(context.patient)) {
    throw outcomeError('forbidden', 'this draft belongs to another patient than the one in your launch', 403);
  }
  return draft;
}

const requireJson: RequestHandler = (request, _response, next) => {
  if (!request.is('application/json')) {
    throw outcomeError('not-supported', 'state-changing calls need Content-Type: application/json', 415);
  }
  next();
};

export function draftsApiRouter(dependencies: DraftsApiDependencies): Router {
  const router = express.Router();
  const fhirClientFor = dependencies.fhirClientFor ?? ((context: LaunchContext) => userFhirClient(context));
  const lifecycleOf = (response: Response) => dependencies.lifecycleFor(contextOf(response));

  router.use((_request, response, next) => {
    // Patient data: never cached by the browser or a proxy.
    response.set('cache-control', 'no-store');
    next();
  });
  router.use(dependencies.requireLaunchContext());
  const changes = [
    requireJson,
    express.json({ type: 'application/json', limit: dependencies.maxBodyBytes ?? 262_144, strict: true }),
  ];

  router.get('/session', async (_request, response) => {
    const context = contextOf(response);
    let patientName: string | undefined;
    try {
      // Shown so the clinician can see whose chart this is; the launch scopes may not allow it.
      const patient = await fhirClientFor(context).read<Patient>('Patient', barePatientId(context.patient));
      const name = patient.name?.[0];
      patientName =
        name?.text ?? ([...(name?.given ?? []), name?.family].filter(Boolean).join(' ') || undefined);
    } catch {
      patientName = undefined;
    }
    response.json({
      patient: barePatientId(context.patient),
      patientName,
      encounter: context.encounter,
      fhirUser: context.fhirUser,
      canChange: practitionerReference(context.fhirUser) !== undefined,
      csrfToken: context.csrfToken,
      expiresAt: new Date(context.expiresAt).toISOString(),
    });
  });

  async function openCitation(context: LaunchContext, type: string, id: string, version?: string) {
    if (
      !citationTypePattern.test(type) ||
      !fhirIdPattern.test(id) ||
      (version && !fhirIdPattern.test(version))
    ) {
      throw outcomeError(
        'invalid',
        'a citation is <ResourceType>/<id> or <ResourceType>/<id>/_history/<version>',
        400,
      );
    }
    const client = fhirClientFor(context);
    // A versioned citation shows the version the draft was written from, not whatever the chart holds now.
    const resource = version
      ? await client.get<FhirResource>(`${type}/${id}/_history/${version}`)
      : await client.read<FhirResource>(type as FhirResource['resourceType'], id);
    if (resource?.resourceType !== type || resource.id !== id) {
      throw outcomeError(
        'exception',
        'the FHIR server returned a different resource than the one cited',
        502,
      );
    }
    if (!isInPatientCompartment(resource, context.patient)) {
      dependencies.logger.warn({ type, id }, 'citation outside the launch patient refused');
      throw outcomeError(
        'forbidden',
        'the cited resource does not belong to the patient in your launch',
        403,
      );
    }
    return describeCitation(resource);
  }

  router.get('/citations/:type/:id', async (request: Request<{ type: string; id: string }>, response) => {
    response.json(await openCitation(contextOf(response), request.params.type, request.params.id));
  });

  router.get(
    '/citations/:type/:id/_history/:version',
    async (request: Request<{ type: string; id: string; version: string }>, response) => {
      const { type, id, version } = request.params;
      response.json(await openCitation(contextOf(response), type, id, version));
    },
  );

  router.get('/', async (_request, response) => {
    const context = contextOf(response);
    const patientId = barePatientId(context.patient);
    const drafts = await lifecycleOf(response).listDrafts(patientId);
    // Defence in depth: a lifecycle or server that returns more than asked for still shows only this patient.
    response.json({ drafts: drafts.filter((draft) => barePatientId(draft.patientId) === patientId) });
  });

  router.get('/:id', async (request: Request<{ id: string }>, response) => {
    const draft = await draftForPatient(lifecycleOf(response), contextOf(response), request.params.id);
    response.json({ draft });
  });

  router.patch('/:id', ...changes, async (request: Request<{ id: string }>, response) => {
    const context = contextOf(response);
    const practitioner = requirePractitioner(context);
    const body = parseBody(editBodySchema, request.body);
    const lifecycle = lifecycleOf(response);
    const draft = await draftForPatient(lifecycle, context, request.params.id);
    const edited = await lifecycle.editDraft(draft.id, body.text, practitioner);
    dependencies.logger.info({ draftId: draft.id }, 'draft-edited');
    response.json({ draft: edited });
  });

  router.post('/:id/sign', ...changes, async (request: Request<{ id: string }>, response) => {
    const context = contextOf(response);
    const practitioner = requirePractitioner(context);
    const body = parseBody(signBodySchema, request.body);
    const lifecycle = lifecycleOf(response);
    const draft = await draftForPatient(lifecycle, context, request.params.id);
    const signed = await lifecycle.signDraft(draft.id, {
      practitioner,
      ...(body.text !== undefined ? { text: body.text } : {}),
    });
    dependencies.logger.info({ draftId: draft.id }, 'draft-signed');
    response.json({ draft: signed });
  });

  router.post('/:id/reject', ...changes, async (request: Request<{ id: string }>, response) => {
    const context = contextOf(response);
    const practitioner = requirePractitioner(context);
    const body = parseBody(rejectBodySchema, request.body);
    const lifecycle = lifecycleOf(response);
    const draft = await draftForPatient(lifecycle, context, request.params.id);
    const rejected = await lifecycle.rejectDraft(draft.id, { practitioner, reason: body.reason });
    dependencies.logger.info({ draftId: draft.id }, 'draft-rejected');
    response.json({ draft: rejected });
  });

  router.post('/:id/regenerate', ...changes, async (request: Request<{ id: string }>, response) => {
    const context = contextOf(response);
    requirePractitioner(context);
    parseBody(emptyBodySchema, request.body);
    const lifecycle = lifecycleOf(response);
    const draft = await draftForPatient(lifecycle, context, request.params.id);
    const regenerated = await lifecycle.regenerateDraft(draft.id);
    dependencies.logger.info({ draftId: draft.id, newDraftId: regenerated.id }, 'draft-regenerated');
    response.json({ draft: regenerated });
  });

  router.use((request, _response) => {
    throw outcomeError('not-found', `no route for ${request.method} /api/drafts${request.path}`, 404);
  });
  // Errors leave as OperationOutcomes wherever the router is mounted.
  router.use(operationOutcomeErrorHandler(dependencies.logger));
  return router;
}
