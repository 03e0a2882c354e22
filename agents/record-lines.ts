import type {
  AllergyIntolerance,
  Condition,
  Encounter,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Procedure,
} from 'fhir/r4.js';
import type { ClinicalNote } from '../fhir/patient-record.ts';
import {
  conceptText,
  isActiveCondition,
  isActiveMedication,
  observationDate,
  oneLine,
} from './record-text.ts';

export { conceptText, isActiveCondition, isActiveMedication, observationDate };

/**
 * One short line per resource, starting with its `[Type/id]` citation: what the model sees of the
 * structured record. Lines carry codes' display text, dates and values, never identifiers or names.
 */
const maximumLineLength = 200;

export function referenceOf(resource: FhirResource): string {
  return `${resource.resourceType}/${resource.id}`;
}

/** A single inert line (see oneLine): the model reads it after a citation it must not be able to fake. */
export function clean(text: string, maximum = maximumLineLength): string {
  return oneLine(text, maximum);
}

function day(value: string | undefined): string | undefined {
  return value?.slice(0, 10);
}

function details(parts: (string | undefined | false)[]): string {
  const present = parts.filter((part): part is string => typeof part === 'string' && part !== '');
  return present.length ? ` (${present.join(', ')})` : '';
}

export function conditionLine(condition: Condition): string {
  return `[${referenceOf(condition)}] ${clean(
    conceptText(condition.code) +
      details([
        condition.clinicalStatus?.coding?.[0]?.code,
        day(condition.onsetDateTime) && `onset ${day(condition.onsetDateTime)}`,
        day(condition.abatementDateTime) && `resolved ${day(condition.abatementDateTime)}`,
      ]),
  )}`;
}

export function medicationLine(medication: MedicationRequest): string {
  const name = medication.medicationCodeableConcept
    ? conceptText(medication.medicationCodeableConcept)
    : (medication.medicationReference?.display ?? 'medication');
  return `[${referenceOf(medication)}] ${clean(
    name +
      details([
        medication.status,
        day(medication.authoredOn) && `since ${day(medication.authoredOn)}`,
        medication.dosageInstruction?.[0]?.text,
      ]),
  )}`;
}

export function allergyLine(allergy: AllergyIntolerance): string {
  return `[${referenceOf(allergy)}] ${clean(
    conceptText(allergy.code) +
      details([
        allergy.clinicalStatus?.coding?.[0]?.code,
        allergy.criticality && `criticality ${allergy.criticality}`,
      ]),
  )}`;
}

function quantity(value: { value?: number; unit?: string; code?: string } | undefined): string | undefined {
  if (value?.value === undefined) return undefined;
  return `${Number(value.value.toFixed(2))} ${value.unit ?? value.code ?? ''}`.trim();
}

export function observationValue(observation: Observation): string {
  if (observation.valueQuantity) return quantity(observation.valueQuantity) ?? '';
  if (observation.valueCodeableConcept) return conceptText(observation.valueCodeableConcept);
  if (observation.valueString !== undefined) return observation.valueString;
  if (observation.valueBoolean !== undefined) return String(observation.valueBoolean);
  if (observation.component?.length) {
    return observation.component
      .map((component) => `${conceptText(component.code)} ${quantity(component.valueQuantity) ?? ''}`.trim())
      .join('; ');
  }
  return 'no value';
}

export function observationLine(observation: Observation): string {
  return `[${referenceOf(observation)}] ${clean(
    `${conceptText(observation.code)} = ${observationValue(observation)}` +
      details([day(observationDate(observation)), observation.status !== 'final' && observation.status]),
  )}`;
}

export function encounterLine(encounter: Encounter): string {
  return `[${referenceOf(encounter)}] ${clean(
    conceptText(encounter.type?.[0]) +
      details([
        encounter.class?.code,
        encounter.status,
        day(encounter.period?.start),
        encounter.reasonCode?.[0] && `reason ${conceptText(encounter.reasonCode[0])}`,
      ]),
  )}`;
}

export function procedureLine(procedure: Procedure): string {
  return `[${referenceOf(procedure)}] ${clean(
    conceptText(procedure.code) +
      details([procedure.status, day(procedure.performedDateTime ?? procedure.performedPeriod?.start)]),
  )}`;
}

export function immunizationLine(immunization: Immunization): string {
  return `[${referenceOf(immunization)}] ${clean(
    conceptText(immunization.vaccineCode) + details([day(immunization.occurrenceDateTime)]),
  )}`;
}

export function noteLine(note: ClinicalNote, tokens: number): string {
  return `[${note.reference}] ${clean(`${note.title}${details([day(note.date), `about ${tokens} tokens`])}`)}`;
}

/** Newest first, by a date accessor; undated last. */
export function newestFirst<T>(items: readonly T[], dateOf: (item: T) => string | undefined): T[] {
  return [...items].sort((left, right) => (dateOf(right) ?? '').localeCompare(dateOf(left) ?? ''));
}
