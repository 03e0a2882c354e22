import type { QuestionnaireResponse } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { ruleFolder } from '../rules/helpers.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';

/**
 * The site's guideline rules see the patient's pre-visit answers: `%questionnaireResponses` in FHIRPath (the
 * answers are then loaded with the record, as an additional type), so a rule can set the visit's urgency from
 * them beside the record, checked element by element at load like any rule.
 */
const answerRule = `id: intake-chest-pain-and-hypertension
version: 1.0.0
title: Chest pain reported before the visit, with hypertension on the problem list
trigger: [encounter-planned]
severity: critical
guideline:
  label: Site triage protocol
  url: https://example.org/triage
  recommendation: Chest pain in a patient with hypertension is seen the same day.
condition:
  criteria:
    - id: chest-pain-reported
      description: The patient answered yes to chest pain in the pre-visit questions
      fhirpath: "%questionnaireResponses.where(status = 'completed').item.where(linkId = 'chest-pain' and answer.value = true).exists()"
suggestedAction: Call the patient today.
urgency:
  level: urgent
  reason: Chest pain reported in the pre-visit questions
`;

function answers(chestPain: boolean, patientId: string, encounterId: string): QuestionnaireResponse {
  return {
    resourceType: 'QuestionnaireResponse',
    id: `intake-${chestPain}`,
    status: 'completed',
    subject: { reference: `Patient/${patientId}` },
    encounter: { reference: `Encounter/${encounterId}` },
    item: [{ linkId: 'chest-pain', text: 'Chest pain?', answer: [{ valueBoolean: chestPain }] }],
  };
}

describe('rules reading the pre-visit answers', () => {
  it('load them with the record and set the urgency from them', async () => {
    const loaded = await loadRuleSet(ruleFolder({ 'intake-chest-pain.yaml': answerRule }));
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    expect(loaded.ruleSet.additionalResourceTypes).toContain('QuestionnaireResponse');

    const record = buildPatientRecord();
    const patientId = record.patient.id as string;
    const encounterId = record.encounter.id as string;
    record.additional = [answers(true, patientId, encounterId)];
    const fired = await evaluateRules(loaded.ruleSet, record, { trigger: 'encounter-planned' });
    expect(fired.urgency).toEqual({
      level: 'urgent',
      reasons: [
        {
          ruleId: 'intake-chest-pain-and-hypertension',
          level: 'urgent',
          reason: 'Chest pain reported in the pre-visit questions',
        },
      ],
    });
    record.additional = [answers(false, patientId, encounterId)];
    const quiet = await evaluateRules(loaded.ruleSet, record, { trigger: 'encounter-planned' });
    expect(quiet.urgency).toBeUndefined();
  });

  it('refuses a misspelt element of the answers at load', async () => {
    const loaded = await loadRuleSet(
      ruleFolder({ 'intake-chest-pain.yaml': answerRule.replace('item.where(linkId', 'items.where(linkId') }),
    );
    expect(loaded.ok).toBe(false);
    if (!loaded.ok) expect(JSON.stringify(loaded.errors)).toMatch(/items/);
  });
});
