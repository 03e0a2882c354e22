import type { DraftLifecycle, DraftView } from '../../fhir/draft-lifecycle.ts';
import type { Logger } from '../log.ts';
import type { NudgeOutcomeKind, NudgeStore } from './nudge-store.ts';

/**
 * Every nudge shown is an outcome to learn from. When a clinician signs a draft, each nudge delivered
 * with it that is still in the signed text counts as accepted, and each one they deleted as ignored;
 * when they reject the draft, its nudges count as overridden with the rejection's reason. A nudge is
 * recognised in the text by the rule tag every engine writes (`rule <id> v<version>`). Recording never
 * undoes a signature: failures are logged.
 */
const ruleTagPattern = /\brule ([A-Za-z0-9][A-Za-z0-9\-.]{0,63}) v([0-9A-Za-z.-]{1,32})\)/g;

export function ruleTagsIn(text: string): Set<string> {
  return new Set([...text.matchAll(ruleTagPattern)].map((match) => `${match[1]} ${match[2]}`));
}

export function withNudgeOutcomes(
  lifecycle: DraftLifecycle,
  store: Pick<NudgeStore, 'deliveriesForOccasion' | 'recordOutcome'>,
  logger: Logger,
): DraftLifecycle {
  async function record(draft: DraftView, decision: 'signed' | 'rejected', reason?: string) {
    try {
      const delivered = await store.deliveriesForOccasion(draft.patientId, draft.encounterId);
      const kept = ruleTagsIn(draft.text);
      for (const delivery of delivered) {
        const outcome: NudgeOutcomeKind =
          decision === 'rejected'
            ? 'overridden'
            : kept.has(`${delivery.ruleId} ${delivery.ruleVersion}`)
              ? 'accepted'
              : 'ignored';
        await store.recordOutcome({
          nudgeId: delivery.nudgeId,
          outcome,
          ...(decision === 'rejected' ? { reason } : {}),
          source: 'review-app',
          recordedAt: new Date(),
        });
      }
      logger.info({ draftId: draft.id, decision, nudges: delivered.length }, 'nudge-outcomes-recorded');
    } catch (error) {
      const message = error instanceof Error ? error.message : String(error);
      logger.warn({ draftId: draft.id, error: message }, 'nudge-outcomes-not-recorded');
    }
  }

  const wrap = (inner: DraftLifecycle): DraftLifecycle => ({
    listDrafts: (patientId) => inner.listDrafts(patientId),
    getDraft: (draftId) => inner.getDraft(draftId),
    editDraft: (draftId, text, actor) => inner.editDraft(draftId, text, actor),
    regenerateDraft: (draftId) => inner.regenerateDraft(draftId),
    async signDraft(draftId, options) {
      const signed = await inner.signDraft(draftId, options);
      await record(signed, 'signed');
      return signed;
    },
    async rejectDraft(draftId, options) {
      const rejected = await inner.rejectDraft(draftId, options);
      await record(rejected, 'rejected', options.reason);
      return rejected;
    },
    withClient: (client) => wrap(inner.withClient(client)),
  });
  return wrap(lifecycle);
}
