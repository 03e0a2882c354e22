import type { QuestionnaireResponse } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { silentLogger } from '../../src/log.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import { verifyDraft } from '../../src/pipeline/process-encounter-job.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { cooperativeReply, ScriptedProvider } from '../support/scripted-model.ts';

/**
 * A briefing the model writes carries the patient's answers too: quoted as given after the model's text (never
 * reworded by it), citing the QuestionnaireResponse, and kept by the verifier.
 */
describe("the model's pre-visit briefing", () => {
  it('quotes the patient answers and cites them', async () => {
    const record = buildPatientRecord();
    const response: QuestionnaireResponse = {
      resourceType: 'QuestionnaireResponse',
      id: 'intake-1',
      status: 'completed',
      subject: { reference: `Patient/${record.patient.id}` },
      encounter: { reference: `Encounter/${record.encounter.id}` },
      authored: '2026-12-07T10:00:00Z',
      item: [
        {
          linkId: 'concern',
          text: 'What is the main reason for your visit?',
          answer: [{ valueString: 'Foot pain' }],
        },
        { linkId: 'medicines', text: 'Please list them.', answer: [{ valueString: 'turmeric capsules' }] },
      ],
    };
    record.additional = [response];
    const engine = new MedGemmaEngine({
      provider: new ScriptedProvider({ fallback: cooperativeReply }),
      prompts: PromptLibrary.load(),
      budget: agentBudgetSchema.parse({ minPromptTokensPerDraft: 40_000, maxPromptTokensPerDraft: 40_000 }),
      logger: silentLogger(),
    });
    const result = await engine.draft({ kind: 'previsit-briefing', record, nudges: [] });
    const verification = verifyDraft(result, record);
    expect(verification.text).toContain(
      '- What is the main reason for your visit?: "Foot pain" [QuestionnaireResponse/intake-1]',
    );
    expect(verification.text).toContain(
      '- Reports "turmeric capsules": not on the medication list [QuestionnaireResponse/intake-1]',
    );
    expect(verification.cited).toContain('QuestionnaireResponse/intake-1');
  }, 60_000);
});
