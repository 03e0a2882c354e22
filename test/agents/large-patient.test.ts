import type { DocumentReference } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { planDraft } from '../../agents/draft-plan.ts';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { isActiveCondition, isActiveMedication } from '../../agents/record-lines.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { silentLogger } from '../../src/log.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { generatePatient } from '../../src/sandbox/synthetic-patients.ts';
import { cooperativeReply, ScriptedProvider } from '../support/scripted-model.ts';

/** The sandbox's long-history patient (scenario 0, more than 300 notes) as retrieval would give it. */
function longHistoryRecord(kind: 'finished' | 'planned'): PatientRecord {
  const { resources } = generatePatient(0, {
    count: 1,
    seed: 7,
    now: new Date('2026-06-01T00:00:00Z'),
    binaryNoteShare: 0,
  });
  const base = recordFromResources(resources);
  const encounter =
    kind === 'planned'
      ? base.encounter
      : [...base.encounters]
          .filter((candidate) => candidate.status === 'finished')
          .sort((left, right) => (right.period?.start ?? '').localeCompare(left.period?.start ?? ''))[0];
  const notes = base.noteResources.map((document: DocumentReference) => ({
    reference: `DocumentReference/${document.id}`,
    id: document.id as string,
    versionId: document.meta?.versionId,
    date: document.date,
    title: document.type?.text ?? 'Progress note',
    text: Buffer.from(document.content[0].attachment.data ?? '', 'base64').toString('utf8'),
  }));
  return { ...base, encounter, notes };
}

describe('the sandbox patient with more than 300 notes', () => {
  const prompts = PromptLibrary.load();

  for (const [kind, status] of [
    ['progress-summary', 'finished'],
    ['previsit-briefing', 'planned'],
  ] as const) {
    it(`writes a ${kind} with the default budget: every call within the context, calls within chunks + 2`, async () => {
      const record = longHistoryRecord(status);
      expect(record.notes.length).toBeGreaterThan(300);
      expect(record.encounter.status).toBe(status);
      const provider = new ScriptedProvider({ contextSize: 16_384, fallback: cooperativeReply });
      const budget = agentBudgetSchema.parse({});
      const result = await new MedGemmaEngine({ provider, prompts, budget, logger: silentLogger() }).draft({
        kind,
        record,
        nudges: [],
      });
      const plan = planDraft(record, budget);
      expect(plan.large).toBe(true);
      const chunks = provider.calls.filter((call) => call.schemaName === 'facts').length;
      expect(provider.calls.length).toBeLessThanOrEqual(chunks + 2);
      for (const call of provider.calls)
        expect(call.promptTokens + call.maxTokens).toBeLessThanOrEqual(16_384);
      const sent = provider.calls.reduce((sum, call) => sum + call.promptTokens, 0);
      expect(sent).toBeLessThan(plan.recordTokens / 50);
      const seen = provider.calls
        .flatMap((call) => call.messages.map((message) => message.content))
        .join('\n');
      for (const condition of record.conditions.filter(isActiveCondition))
        expect(seen).toContain(`[Condition/${condition.id}]`);
      for (const medication of record.medications.filter(isActiveMedication))
        expect(seen).toContain(`[MedicationRequest/${medication.id}]`);
      expect(verifyDraft(result, record).flagged).toBe(false);
      expect(result.text).toContain('## ');
    });
  }

  it('maps over several chunks when the configured budget is large and the context small', async () => {
    const record = longHistoryRecord('finished');
    const provider = new ScriptedProvider({ contextSize: 4096, fallback: cooperativeReply });
    const budget = agentBudgetSchema.parse({
      promptShareOfRecord: 0.5,
      minPromptTokensPerDraft: 60_000,
      maxPromptTokensPerDraft: 60_000,
      materialTokens: 12_000,
      maxOutputTokens: 768,
    });
    const result = await new MedGemmaEngine({ provider, prompts, budget, logger: silentLogger() }).draft({
      kind: 'progress-summary',
      record,
      nudges: [],
    });
    const chunks = provider.calls.filter((call) => call.schemaName === 'facts').length;
    expect(chunks).toBeGreaterThan(3);
    for (const call of provider.calls) expect(call.promptTokens + call.maxTokens).toBeLessThanOrEqual(4096);
    expect(verifyDraft(result, record).flagged).toBe(false);
  });
});
