import express, { type Request, type RequestHandler, type Response, type Router } from 'express';
import type { Encounter, FhirResource, Patient, Practitioner } from 'fhir/r4.js';
import { z } from 'zod';
import { type EncounterLabel, encounterLabel, personName } from '../../fhir/display-labels.ts';
import type { RemovedStatement } from '../../fhir/draft-note.ts';
import type { RecordChangeView } from '../../fhir/draft-view.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { isFhirId } from '../../fhir/fhir-id.ts';
import type { PacsAccess } from '../../fhir/imaging/record-images.ts';
import {
  FhirRequestError,
  likelyMissingScopes,
  normalizeOperationOutcome,
  type OperationOutcomeError,
  outcomeError,
} from '../../fhir/operation-outcome.ts';
import type { ScopeContext } from '../../fhir/smart-scopes.ts';
import type { Logger } from '../log.ts';
import {
  barePatientId,
  citationImage,
  citationImageSizes,
  citationTypePattern,
  describeCitation,
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
  /** The signer's name: as recorded at sign-off, or looked up for the page. */
  signedByName?: string;
  /** The encounter in words: as recorded with the draft, or looked up for the page. */
  encounterLabel?: EncounterLabel;
  /** What the citation verifier removed from a flagged draft, when recorded. */
  removedStatements?: RemovedStatement[];
  /** Set by regenerateDraft: a new draft is queued and will replace this one. */
  regenerationRequested?: boolean;
  /** When the service last rewrote the draft for a later version of its encounter (absent: never). */
  updatedAt?: string;
  /** What changed in the record since the draft was written, once a clinician had a hand in it. */
  recordChanged?: RecordChangeView;
}

/** The part of the draft lifecycle the API drives (created per request with the user's FHIR token). */
export interface DraftLifecyclePort {
  listDrafts(patientId: string): Promise<DraftView[]>;
  getDraft(draftId: string): Promise<DraftView | undefined>;
  editDraft(draftId: string, text: string, actor: string): Promise<DraftView>;
  signDraft(
    draftId: string,
    options: { practitioner: string; text?: string; practitionerName?: string },
  ): Promise<DraftView>;
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
  /** The PACS, for pictures of cited ImagingStudies (issue 18); absent: those have none. */
  pacs?: PacsAccess;
}

const maxTextCharacters = 100_000;
/** Encounters and signers looked up per list: enough for a patient's recent drafts, bounded for a long chart. */
const maxLookups = 20;

const editBodySchema = z.object({ text: z.string().trim().min(1).max(maxTextCharacters) }).strict();
const signBodySchema = z
  .object({ text: z.string().trim().min(1).max(maxTextCharacters).optional() })
  .strict();
const rejectBodySchema = z.object({ reason: z.string().trim().min(3).max(2_000) }).strict();
const emptyBodySchema = z.object({}).strict();
const draftIdSchema = z.string().refine(isFhirId, 'is not a FHIR id');

/**
 * Which scopes a refusal of the user's token names: `patient/` when the launch holds patient-context scopes
 * (the review app's reads and writes of the chart), `user/` otherwise. Never `system/`: that is the
 * service's own grant, and asking an EHR administrator to widen it would not help the clinician.
 */
export function launchScopeContext(context: Pick<LaunchContext, 'scopes'>): ScopeContext {
  return (context.scopes ?? []).some((scope) => scope.startsWith('patient/')) ? 'patient' : 'user';
}

/** A FhirClient that sends the signed-in user's token (never the service's own) to the launch's FHIR server. */
export function userFhirClient(context: LaunchContext, options: { timeoutMs?: number } = {}): FhirClient {
  return new FhirClient({
    baseUrl: context.fhirBaseUrl,
    timeoutMs: options.timeoutMs ?? 15_000,
    maxAttempts: 2,
    accessToken: { getToken: async () => context.accessToken, invalidate: () => {} },
    scopeContext: launchScopeContext(context),
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

/**
 * The FHIR server refused the clinician's own token (401), or no longer lets it act (403): the launch is
 * over, and only a new one from the EHR helps. The page turns this into one plain sentence.
 */
export function ehrSessionEnded(): OperationOutcomeError {
  return outcomeError(
    'login',
    'the EHR no longer accepts this session: open the app again from the patient’s chart in the EHR',
    401,
  );
}

const refusedByEhr = (error: unknown) => {
  const status = normalizeOperationOutcome(error).status;
  return status === 401 || status === 403;
};

/**
 * The lifecycle with the EHR's refusals of the user's token turned into {@link ehrSessionEnded}. Every
 * 401 or 403 the lifecycle raises comes from the FHIR server: its own refusals are 400, 404 and 409.
 */
function endingSessionOnRefusal(
  lifecycle: DraftLifecyclePort,
  logger: Logger,
  scopeContext: ScopeContext,
): DraftLifecyclePort {
  const guard =
    <A extends unknown[], R>(call: (...args: A) => Promise<R>) =>
    async (...args: A): Promise<R> => {
      try {
        return await call(...args);
      } catch (error) {
        if (!refusedByEhr(error)) throw error;
        const status = normalizeOperationOutcome(error).status;
        // The clinician sees one sentence; the operator learns which request and which scope (never the
        // server's diagnostics, which can echo the note).
        const refused =
          error instanceof FhirRequestError
            ? error.request.entries?.length
              ? error.request.entries
              : [error.request]
            : [];
        const missingScopes = status === 403 ? likelyMissingScopes(refused, scopeContext) : '';
        logger.warn(
          {
            status,
            ...(refused.length > 0
              ? {
                  requests: refused.map((request) =>
                    [request.interaction, request.resourceType].filter(Boolean).join(' '),
                  ),
                }
              : {}),
            ...(missingScopes ? { missingScopes } : {}),
          },
          'ehr-refused-user-token',
        );
        throw ehrSessionEnded();
      }
    };
  return {
    listDrafts: guard((patientId) => lifecycle.listDrafts(patientId)),
    getDraft: guard((draftId) => lifecycle.getDraft(draftId)),
    editDraft: guard((draftId, text, actor) => lifecycle.editDraft(draftId, text, actor)),
    signDraft: guard((draftId, options) => lifecycle.signDraft(draftId, options)),
    rejectDraft: guard((draftId, options) => lifecycle.rejectDraft(draftId, options)),
    regenerateDraft: guard((draftId) => lifecycle.regenerateDraft(draftId)),
  };
}

/**
 * A read made only to name something (a patient, a visit, a clinician): the page works without it, so a
 * refusal leaves the name out. Only a 401 says more: the user's token is dead, and so is the session.
 */
async function lookUp<T>(read: () => Promise<T>): Promise<T | undefined> {
  try {
    return await read();
  } catch (error) {
    if (normalizeOperationOutcome(error).status === 401) throw ehrSessionEnded();
    return undefined;
  }
}

const bareId = (reference: string | undefined) => reference?.split('/').at(-1);

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
  const lifecycleOf = (response: Response) =>
    endingSessionOnRefusal(
      dependencies.lifecycleFor(contextOf(response)),
      dependencies.logger,
      launchScopeContext(contextOf(response)),
    );

  /** The encounter in words, read with the user's token; only an encounter of the launch patient counts. */
  async function encounterLabelFor(context: LaunchContext, encounterId: string | undefined) {
    const id = bareId(encounterId);
    if (!isFhirId(id)) return undefined;
    const encounter = await lookUp(() => fhirClientFor(context).read<Encounter>('Encounter', id));
    if (!encounter || !isInPatientCompartment(encounter, context.patient)) return undefined;
    const label = encounterLabel(encounter);
    return Object.keys(label).length > 0 ? label : undefined;
  }

  /** A practitioner's name, read with the user's token (needs a Practitioner read scope; else none). */
  async function practitionerNameFor(context: LaunchContext, reference: string | undefined) {
    const id = reference ? /^Practitioner\/([A-Za-z0-9\-.]{1,64})$/.exec(reference)?.[1] : undefined;
    if (!id) return undefined;
    const practitioner = await lookUp(() => fhirClientFor(context).read<Practitioner>('Practitioner', id));
    return practitioner?.resourceType === 'Practitioner' ? personName(practitioner.name) : undefined;
  }

  /** Fills in the visit and signer names a draft did not record (drafts written before they were). */
  async function withNames(context: LaunchContext, drafts: DraftView[]): Promise<DraftView[]> {
    const encounterIds = [
      ...new Set(drafts.filter((draft) => !draft.encounterLabel?.type).map((draft) => draft.encounterId)),
    ]
      .filter((id): id is string => Boolean(id))
      .slice(0, maxLookups);
    const signers = [
      ...new Set(
        drafts.filter((draft) => draft.signedBy && !draft.signedByName).map((draft) => draft.signedBy),
      ),
    ]
      .filter((reference): reference is string => Boolean(reference))
      .slice(0, maxLookups);
    const [labels, names] = await Promise.all([
      Promise.all(encounterIds.map(async (id) => [id, await encounterLabelFor(context, id)] as const)),
      Promise.all(
        signers.map(async (reference) => [reference, await practitionerNameFor(context, reference)] as const),
      ),
    ]);
    const labelById = new Map(labels.filter(([, label]) => label));
    const nameByReference = new Map(names.filter(([, name]) => name));
    return drafts.map((draft) => {
      const label = draft.encounterId ? labelById.get(draft.encounterId) : undefined;
      const name = draft.signedBy ? nameByReference.get(draft.signedBy) : undefined;
      return {
        ...draft,
        ...(label
          ? {
              encounterLabel: {
                ...label,
                ...draft.encounterLabel,
                type: label.type ?? draft.encounterLabel?.type,
              },
            }
          : {}),
        ...(name ? { signedByName: name } : {}),
      };
    });
  }

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
    // Shown so the clinician can see whose chart, which visit and who is signed in; the launch scopes may
    // not allow every read, and the page then shows less.
    const [patient, launchedEncounter, userName] = await Promise.all([
      lookUp(() => fhirClientFor(context).read<Patient>('Patient', barePatientId(context.patient))),
      encounterLabelFor(context, context.encounter),
      practitionerNameFor(context, practitionerReference(context.fhirUser)),
    ]);
    response.json({
      patient: barePatientId(context.patient),
      patientName: patient?.resourceType === 'Patient' ? personName(patient.name) : undefined,
      encounter: bareId(context.encounter),
      encounterLabel: launchedEncounter,
      fhirUser: context.fhirUser,
      userName,
      canChange: practitionerReference(context.fhirUser) !== undefined,
      csrfToken: context.csrfToken,
      expiresAt: new Date(context.expiresAt).toISOString(),
    });
  });

  async function openCitation(context: LaunchContext, type: string, id: string, version?: string) {
    if (!citationTypePattern.test(type) || !isFhirId(id) || (version && !isFhirId(version))) {
      throw outcomeError(
        'invalid',
        'a citation is <ResourceType>/<id> or <ResourceType>/<id>/_history/<version>',
        400,
      );
    }
    const client = fhirClientFor(context);
    // A versioned citation shows the version the draft was written from, not whatever the chart holds now.
    let resource: FhirResource;
    try {
      resource = version
        ? await client.get<FhirResource>(`${type}/${id}/_history/${version}`)
        : await client.read<FhirResource>(type as FhirResource['resourceType'], id);
    } catch (error) {
      if (normalizeOperationOutcome(error).status === 401) throw ehrSessionEnded();
      throw error;
    }
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

  // The picture of a cited image (Media, an image attachment), read with the clinician's token like the citation.
  router.get(
    '/citations/:type/:id/image',
    async (request: Request<{ type: string; id: string }>, response) => {
      const context = contextOf(response);
      const view = await openCitation(context, request.params.type, request.params.id);
      const size = request.query.size === 'full' ? citationImageSizes.full : citationImageSizes.thumbnail;
      const image = await citationImage(fhirClientFor(context), view.resource, context.patient, size, {
        ...(dependencies.pacs ? { pacs: dependencies.pacs } : {}),
      });
      if (!image) throw outcomeError('not-found', `${view.reference} holds no image`, 404);
      response.json(image);
    },
  );

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
    const own = drafts.filter((draft) => barePatientId(draft.patientId) === patientId);
    response.json({ drafts: await withNames(context, own) });
  });

  router.get('/:id', async (request: Request<{ id: string }>, response) => {
    const context = contextOf(response);
    const draft = await draftForPatient(lifecycleOf(response), context, request.params.id);
    response.json({ draft: (await withNames(context, [draft]))[0] });
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
    // The signed note names its signer in words; without a Practitioner read scope it says "a clinician".
    const practitionerName = await practitionerNameFor(context, practitioner);
    const signed = await lifecycle.signDraft(draft.id, {
      practitioner,
      ...(body.text !== undefined ? { text: body.text } : {}),
      ...(practitionerName ? { practitionerName } : {}),
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
