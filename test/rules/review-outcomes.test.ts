import { describe, expect, it } from 'vitest';
import type { DraftLifecycle, DraftView } from '../../fhir/draft-lifecycle.ts';
import { silentLogger } from '../../src/log.ts';
import { InMemoryNudgeStore } from '../../src/rules/nudge-store.ts';
import { withNudgeOutcomes } from '../../src/rules/review-outcomes.ts';

const view = (text: string, status: DraftView['status']): DraftView => ({
  id: 'd1',
  patientId: 'p1',
  encounterId: 'e1',
  kind: 'previsit-briefing',
  status,
  text,
  title: 'AI draft pre-visit briefing',
  createdAt: '2026-11-27T10:00:00Z',
  citations: [],
  flagged: false,
  mode: 'write',
});

/** A lifecycle double that returns what a clinician's action would leave: only the review decorator is under test. */
function lifecycleReturning(text: string): DraftLifecycle {
  const lifecycle: DraftLifecycle = {
    listDrafts: async () => [],
    getDraft: async () => view(text, 'preliminary'),
    editDraft: async () => view(text, 'preliminary'),
    signDraft: async (_id, options) => view(options.text ?? text, 'final'),
    rejectDraft: async () => view(text, 'entered-in-error'),
    regenerateDraft: async () => view(text, 'preliminary'),
    withClient: () => lifecycle,
  };
  return lifecycle;
}

async function storeWithTwoNudges() {
  const store = new InMemoryNudgeStore();
  for (const ruleId of ['diabetes-statin', 'influenza-vaccine']) {
    await store.recordDelivery({
      nudgeId: `${ruleId}-n`,
      ruleId,
      ruleVersion: '1.0.0',
      patientId: 'p1',
      occasionId: 'e1',
      deliveredAt: new Date(),
    });
  }
  // Another encounter's nudge must not be touched.
  await store.recordDelivery({
    nudgeId: 'other',
    ruleId: 'diabetes-statin',
    ruleVersion: '1.0.0',
    patientId: 'p1',
    occasionId: 'e0',
    deliveredAt: new Date(),
  });
  return store;
}

const draftText = [
  'Suggested actions:',
  '- Consider a statin (ADA, grade A; rule diabetes-statin v1.0.0) [Condition/c1]',
  '- Offer influenza vaccine (ACIP; rule influenza-vaccine v1.0.0) [Patient/p1]',
].join('\n');

describe('nudge outcomes from the review app', () => {
  it('counts a kept nudge as accepted and a deleted one as ignored when the draft is signed', async () => {
    const store = await storeWithTwoNudges();
    const lifecycle = withNudgeOutcomes(lifecycleReturning(draftText), store, silentLogger());
    const signedText = draftText.split('\n').slice(0, 2).join('\n');
    await lifecycle
      .withClient({} as never)
      .signDraft('d1', { practitioner: 'Practitioner/pr1', text: signedText });
    const statistics = await store.statistics();
    expect(statistics.find((row) => row.ruleId === 'diabetes-statin')).toMatchObject({
      accepted: 1,
      ignored: 0,
    });
    expect(statistics.find((row) => row.ruleId === 'influenza-vaccine')).toMatchObject({
      accepted: 0,
      ignored: 1,
    });
  });

  it('counts every nudge of a rejected draft as overridden, with the reason', async () => {
    const store = await storeWithTwoNudges();
    const lifecycle = withNudgeOutcomes(lifecycleReturning(draftText), store, silentLogger());
    await lifecycle.rejectDraft('d1', {
      practitioner: 'Practitioner/pr1',
      reason: 'patient declined statins before',
    });
    const statistics = await store.statistics();
    const statin = statistics.find((row) => row.ruleId === 'diabetes-statin');
    expect(statin).toMatchObject({ overridden: 1, accepted: 0 });
    expect(JSON.stringify(statin)).toContain('patient declined statins before');
  });
});
