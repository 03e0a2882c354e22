import { signedNoteText } from '../../fhir/draft-lifecycle.ts';
import { OperationOutcomeError, outcome, outcomeError } from '../../fhir/operation-outcome.ts';
import type { DraftLifecyclePort, DraftView } from '../../src/http/drafts-api-routes.ts';

/**
 * An in-memory stand-in for the draft lifecycle, for the API tests: same interface, the same refusals (only
 * preliminary drafts change), the same signed heading, and a record of every call so tests can assert what the
 * API asked for. `refuseWith(401)` makes every call fail as the FhirClient does when the EHR refuses the token.
 */
export interface RecordedCall {
  method: string;
  draftId?: string;
  arguments: unknown[];
}

export function createMemoryDraftLifecycle(seed: DraftView[]) {
  const drafts = new Map(seed.map((draft) => [draft.id, structuredClone(draft)]));
  const calls: RecordedCall[] = [];
  let refusal: OperationOutcomeError | undefined;
  const checkAccepted = () => {
    if (refusal) throw refusal;
  };
  const open = (draftId: string) => {
    checkAccepted();
    const draft = drafts.get(draftId);
    if (!draft) throw outcomeError('not-found', 'no such draft', 404);
    if (draft.status !== 'preliminary') throw outcomeError('conflict', `draft is ${draft.status}`, 409);
    return draft;
  };
  const lifecycle: DraftLifecyclePort = {
    async listDrafts(patientId) {
      calls.push({ method: 'listDrafts', arguments: [patientId] });
      checkAccepted();
      return [...drafts.values()]
        .filter((draft) => draft.patientId === patientId)
        .map((draft) => structuredClone(draft));
    },
    async getDraft(draftId) {
      calls.push({ method: 'getDraft', draftId, arguments: [] });
      checkAccepted();
      const draft = drafts.get(draftId);
      return draft ? structuredClone(draft) : undefined;
    },
    async editDraft(draftId, text, actor) {
      calls.push({ method: 'editDraft', draftId, arguments: [text, actor] });
      const draft = open(draftId);
      draft.text = text;
      return structuredClone(draft);
    },
    async signDraft(draftId, options) {
      calls.push({ method: 'signDraft', draftId, arguments: [options] });
      const draft = open(draftId);
      draft.text = signedNoteText(options.text ?? draft.text, {
        name: options.practitionerName,
        date: new Date(),
      });
      draft.status = 'final';
      draft.signedBy = options.practitioner;
      if (options.practitionerName) draft.signedByName = options.practitionerName;
      return structuredClone(draft);
    },
    async rejectDraft(draftId, options) {
      calls.push({ method: 'rejectDraft', draftId, arguments: [options] });
      const draft = open(draftId);
      draft.status = 'entered-in-error';
      return structuredClone(draft);
    },
    async regenerateDraft(draftId) {
      calls.push({ method: 'regenerateDraft', draftId, arguments: [] });
      // Like the real lifecycle: the new draft is queued; this one stays until the writer supersedes it.
      return { ...structuredClone(open(draftId)), regenerationRequested: true };
    },
  };
  return {
    lifecycle,
    calls,
    drafts,
    /** From now on every call fails with this HTTP status from the EHR (undefined: accepted again). */
    refuseWith(status: number | undefined) {
      refusal = status
        ? new OperationOutcomeError(outcome('exception', `GET DocumentReference: HTTP ${status}`), { status })
        : undefined;
    },
  };
}
