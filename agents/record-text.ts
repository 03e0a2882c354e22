import type {
  CodeableConcept,
  Condition,
  Encounter,
  MedicationRequest,
  Observation,
  Quantity,
} from 'fhir/r4.js';

/**
 * Short, human wording of FHIR values, shared by the extractive engine and the model's tools. Every
 * text taken from the record passes through oneLine or labelText: record text is data written by
 * whoever wrote to the EHR, and must never become a line, a heading or a citation of the draft.
 */

/** C0 and C1 controls (tab, newline, NEL...) and the Unicode line and paragraph separators. */
const lineBreaking = /[\p{Cc}\u2028\u2029]+/gu;
/** What ends a line on some reader: newline, return, vertical tab, form feed, NEL, the separators. */
const lineBreaks = /[\n\r\v\f\u0085\u2028\u2029]+/;
/** Invisible characters that can hide or reorder text on screen: zero-width marks and bidi controls. */
const invisible = /[\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]/g;
/** Markup a line could open with: a heading, a quote, a list dash (a minus before a digit is a value). */
const leadingMarkup = /^(?:[#>\s]|-(?!\d))+/;

function inert(text: string): string {
  return (
    text
      .replace(invisible, '')
      .replace(lineBreaking, ' ')
      // Square brackets are how a draft cites; in record text they could fake a citation.
      .replace(/\[/g, '(')
      .replace(/\]/g, ')')
      .replace(/\s+/g, ' ')
      .trim()
      .replace(leadingMarkup, '')
  );
}

function shortened(text: string, maxLength: number): string {
  return text.length <= maxLength ? text : `${text.slice(0, maxLength - 1).trimEnd()}…`;
}

/** Free text from the record (a note excerpt, a dosage, a value) as one inert line: its lines joined. */
export function oneLine(text: string, maxLength: number): string {
  return shortened(inert(text), maxLength);
}

/**
 * A name from the record (a code's text or display) as one inert line. A name is one line: whatever
 * follows a line break is not part of it, so it is dropped and the cut is marked.
 */
export function labelText(text: string, maxLength = 160): string {
  const [first, ...rest] = text
    .replace(invisible, '')
    .split(lineBreaks)
    .filter((line) => line.trim() !== '');
  const label = inert(first ?? '');
  return shortened(rest.length > 0 ? `${label} …` : label, maxLength);
}

export function conceptText(concept: CodeableConcept | undefined): string {
  const text =
    concept?.text ?? concept?.coding?.find((coding) => coding.display)?.display ?? concept?.coding?.[0]?.code;
  return (text && labelText(text)) || 'unnamed';
}

export function day(dateTime: string | undefined): string {
  return (dateTime && oneLine(dateTime.slice(0, 10), 10)) || 'date unknown';
}

/**
 * A unit as a clinician writes it. Records often carry UCUM codes as the unit text: square brackets are part of
 * the code, not of what anyone reads (`mm[Hg]` is mmHg), and a `{...}` annotation says what was counted and
 * stands for no unit at all (`{score}`).
 */
function unitText(unit: string | undefined): string {
  return labelText(
    (unit ?? '')
      .replace(/\{[^}]*\}/g, '')
      .replace(/\[([^\]]*)\]/g, '$1')
      .trim(),
    40,
  );
}

export function quantityText(quantity: Quantity | undefined): string | undefined {
  if (quantity?.value === undefined) return undefined;
  const unit = unitText(quantity.unit ?? quantity.code);
  return `${Number(quantity.value.toFixed(2))}${unit ? ` ${unit}` : ''}`;
}

export function observationValue(observation: Observation): string {
  const direct =
    quantityText(observation.valueQuantity) ??
    (observation.valueString !== undefined ? oneLine(observation.valueString, 200) : undefined) ??
    (observation.valueCodeableConcept ? conceptText(observation.valueCodeableConcept) : undefined);
  if (direct) return direct;
  const components = (observation.component ?? [])
    .map((component) => quantityText(component.valueQuantity))
    .filter((value): value is string => value !== undefined);
  // Blood pressure and similar panels: "128/82 mmHg".
  if (components.length > 0) {
    const unit = unitText(observation.component?.[0]?.valueQuantity?.unit);
    return `${components.map((value) => value.replace(` ${unit}`, '')).join('/')}${unit ? ` ${unit}` : ''}`;
  }
  return 'no value';
}

export function observationDate(observation: Observation): string | undefined {
  return observation.effectiveDateTime ?? observation.effectivePeriod?.start ?? observation.issued;
}

export function isActiveCondition(condition: Condition): boolean {
  const status = condition.clinicalStatus?.coding?.[0]?.code;
  if (status) return status === 'active' || status === 'recurrence' || status === 'relapse';
  return !condition.abatementDateTime && !condition.abatementPeriod && !condition.abatementString;
}

export function isActiveMedication(medication: MedicationRequest): boolean {
  return medication.status === 'active' || medication.status === 'on-hold';
}

export function medicationName(medication: MedicationRequest): string {
  return medication.medicationCodeableConcept
    ? conceptText(medication.medicationCodeableConcept)
    : labelText(medication.medicationReference?.display ?? '') || 'medication';
}

export function encounterDate(encounter: Encounter): string | undefined {
  return encounter.period?.start ?? encounter.period?.end;
}

export function encounterText(encounter: Encounter): string {
  const type = encounter.type?.[0]
    ? conceptText(encounter.type[0])
    : labelText(encounter.class?.display ?? encounter.class?.code ?? '') || 'encounter';
  const reason = encounter.reasonCode?.[0] ? ` for ${conceptText(encounter.reasonCode[0])}` : '';
  return `${type}${reason}`;
}
