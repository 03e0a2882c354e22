import { outcomeError } from '../../fhir/operation-outcome.ts';
import type { DraftLifecyclePort, DraftView } from '../../src/http/drafts-api-routes.ts';

/**
 * An in-memory stand-in for the draft lifecycle, for the API tests: same interface, the same refusals (only
 * preliminary drafts change), and a record of every call so tests can assert what the API asked for.
 */
export interface RecordedCall {
  method: string;
  draftId?: string;
  arguments: unknown[];
}

export function createMemoryDraftLifecycle(seed: DraftView[]) {
  const drafts = new Map(seed.map((draft) => [draft.id, structuredClone(draft)]));
  const calls: RecordedCall[] = [];
  const open = (draftId: string) => {
    const draft = drafts.get(draftId);
    if (!draft) throw outcomeError('not-found', 'no such draft', 404);
    if (draft.status !== 'preliminary') throw outcomeError('conflict', `draft is ${draft.status}`, 409);
    return draft;
  };
  const lifecycle: DraftLifecyclePort = {
    async listDrafts(patientId) {
      calls.push({ method: 'listDrafts', arguments: [patientId] });
      return [...drafts.values()]
        .filter((draft) => draft.patientId === patientId)
        .map((draft) => structuredClone(draft));
    },
    async getDraft(draftId) {
      calls.push({ method: 'getDraft', draftId, arguments: [] });
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
      if (options.text) draft.text = options.text;
      draft.status = 'final';
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
  return { lifecycle, calls, drafts };
}
