import type { AllergyIntolerance, Condition, MedicationRequest, Observation } from 'fhir/r4.js';
import type { NudgeInput } from '../../agents/draft-engine.ts';
import {
  conceptText,
  isActiveCondition,
  isActiveMedication,
  medicationName,
  observationDate,
  quantityText,
} from '../../agents/record-text.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';

/**
 * The labelled set, made mechanically from the record a run reads: for one draft, the facts a good
 * draft must contain, each with the terms a line must hold and the resources it may cite to count as
 * having said it. Categories follow the issue: active problems, active medications, allergies, the
 * latest key results (value, unit, date), the nudges the rules decided, and statements planted in notes.
 */
export const factCategories = ['problem', 'medication', 'allergy', 'result', 'nudge', 'planted'] as const;
export type FactCategory = (typeof factCategories)[number];

export interface LabelledFact {
  category: FactCategory;
  /** `Type/id`s a line may cite to carry this fact; empty: no citation is required (nudges without evidence). */
  sources: string[];
  /** Every one must appear in the line (see containsTerm). */
  terms: string[];
}

/** A statement planted in a note, with the note that holds it (from the sandbox generator's truth). */
export interface PlantedTruth {
  terms: string[];
  note: string;
}

/** Key results by LOINC: the latest of each that the record holds is a fact. */
const keyResultCodes = new Set([
  '4548-4', // HbA1c
  '85354-9', // blood pressure panel
  '2160-0', // creatinine
  '2823-3', // potassium (serum or plasma)
  '6298-4', // potassium (blood)
  '18262-6', // LDL (direct)
  '13457-7', // LDL (calculated)
  '2089-1', // LDL
  '39156-5', // BMI
  '44249-1', // PHQ-9
  '33914-3', // eGFR (MDRD)
  '62238-1', // eGFR (CKD-EPI)
  '2339-0', // glucose (blood)
  '2345-7', // glucose (serum or plasma)
]);

/** Words of a coded display that say nothing on their own: SNOMED's semantic tags and joining words. */
const insignificantWords = new Set([
  'and',
  'the',
  'for',
  'with',
  'without',
  'due',
  'disorder',
  'finding',
  'situation',
  'procedure',
  'substance',
  'product',
  'oral',
  'tablet',
  'capsule',
  'extended',
  'release',
  'hour',
]);

/** Lower case, one space, a number and its unit spelt one way (`10mg` and `10 mg` alike). */
export function normalizeText(text: string): string {
  return text
    .toLowerCase()
    .replace(/\s+/g, ' ')
    .replace(/(\d)\s*(mg|mcg|g|ml|units?|mmol\/l|mg\/dl|kg\/m2|mmhg)\b/g, '$1 $2')
    .trim();
}

/** Whole-word containment: `8.8` is not found in `18.8`, nor `cough` in `coughing`. */
export function containsTerm(normalizedText: string, term: string): boolean {
  const wanted = normalizeText(term);
  if (wanted === '') return true;
  const escaped = wanted.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&');
  // A number is not part of a longer number (8.8 in 18.8 or 8.85); a word not part of a longer word.
  // A date may run on into a time (2026-11-30t14:00).
  const before = /^\d/.test(wanted) ? '(?<![0-9.])' : /^[a-z]/.test(wanted) ? '(?<![a-z])' : '';
  const after = /\d$/.test(wanted) ? '(?![0-9]|\\.[0-9])' : /[a-z]$/.test(wanted) ? '(?![a-z])' : '';
  return new RegExp(`${before}${escaped}${after}`).test(normalizedText);
}

export function significantWords(display: string): string[] {
  const words = normalizeText(display.replace(/\([^)]*\)/g, ' '))
    .split(/[^a-z0-9]+/)
    .filter((word) => word.length >= 3 && !/^\d+$/.test(word) && !insignificantWords.has(word));
  return [...new Set(words)];
}

function problemFact(condition: Condition): LabelledFact {
  return {
    category: 'problem',
    sources: [`Condition/${condition.id}`],
    terms: significantWords(conceptText(condition.code)),
  };
}

function medicationFact(medication: MedicationRequest): LabelledFact {
  const name = medicationName(medication);
  const ingredient = normalizeText(name)
    .split(/[^a-z]+/)
    .find((word) => word.length >= 4 && !insignificantWords.has(word));
  const strength = normalizeText(name).match(/\d+(?:\.\d+)? (?:mg|mcg|g|ml|units?)\b/)?.[0];
  return {
    category: 'medication',
    sources: [`MedicationRequest/${medication.id}`],
    terms: [ingredient ?? normalizeText(name), ...(strength ? [strength] : [])],
  };
}

function allergyFact(allergy: AllergyIntolerance): LabelledFact {
  return {
    category: 'allergy',
    sources: [`AllergyIntolerance/${allergy.id}`],
    terms: significantWords(conceptText(allergy.code)),
  };
}

/** Value(s), unit and date: `124`, `79`, `mmHg`, `2026-05-25` for a blood pressure panel. */
function resultFact(observation: Observation): LabelledFact {
  const quantities = observation.valueQuantity
    ? [observation.valueQuantity]
    : (observation.component ?? []).flatMap((component) =>
        component.valueQuantity ? [component.valueQuantity] : [],
      );
  const values = quantities.flatMap((quantity) =>
    quantity.value !== undefined ? [String(Number(quantity.value.toFixed(2)))] : [],
  );
  const unit = quantities[0] ? (quantityText(quantities[0]) ?? '').replace(/^[-\d.\s]+/, '').trim() : '';
  const date = observationDate(observation)?.slice(0, 10);
  return {
    category: 'result',
    sources: [`Observation/${observation.id}`],
    terms: [...values, ...(unit ? [unit] : []), ...(date ? [date] : [])],
  };
}

function latestKeyResults(observations: Observation[]): Observation[] {
  const latest = new Map<string, Observation>();
  for (const observation of observations) {
    if (observation.status === 'entered-in-error') continue;
    const code = observation.code.coding?.find(
      (coding) => coding.code && keyResultCodes.has(coding.code),
    )?.code;
    if (!code) continue;
    const current = latest.get(code);
    if (!current || (observationDate(observation) ?? '') > (observationDate(current) ?? '')) {
      latest.set(code, observation);
    }
  }
  return [...latest.values()];
}

function isActiveAllergy(allergy: AllergyIntolerance): boolean {
  const status = allergy.clinicalStatus?.coding?.[0]?.code;
  return (
    (status === undefined || status === 'active') &&
    allergy.verificationStatus?.coding?.[0]?.code !== 'entered-in-error'
  );
}

/**
 * The facts one draft must contain. Planted statements count only when their note is in the record
 * (a note after the visit, or one the retrieval left out, cannot be asked of a draft).
 */
export function labelledFacts(
  record: PatientRecord,
  nudges: readonly NudgeInput[],
  planted: readonly PlantedTruth[] = [],
): LabelledFact[] {
  const notes = new Set(record.notes.map((note) => note.reference));
  return [
    ...record.conditions.filter(isActiveCondition).map(problemFact),
    ...record.medications.filter(isActiveMedication).map(medicationFact),
    ...record.allergies.filter(isActiveAllergy).map(allergyFact),
    ...latestKeyResults(record.observations).map(resultFact),
    ...nudges.map(
      (nudge): LabelledFact => ({
        category: 'nudge',
        sources: [...nudge.evidence],
        terms: [`rule ${nudge.ruleId}`],
      }),
    ),
    ...planted
      .filter((truth) => notes.has(truth.note))
      .map(
        (truth): LabelledFact => ({ category: 'planted', sources: [truth.note], terms: [...truth.terms] }),
      ),
  ].filter((fact) => fact.terms.length > 0);
}
