import type {
  CodeableConcept,
  Condition,
  Encounter,
  MedicationRequest,
  Observation,
  Quantity,
} from 'fhir/r4.js';

/** Short, human wording of FHIR values, shared by the extractive engine and the model's tools. */
export function conceptText(concept: CodeableConcept | undefined): string {
  return (
    concept?.text ??
    concept?.coding?.find((coding) => coding.display)?.display ??
    concept?.coding?.[0]?.code ??
    'unnamed'
  );
}

export function day(dateTime: string | undefined): string {
  return dateTime ? dateTime.slice(0, 10) : 'date unknown';
}

export function quantityText(quantity: Quantity | undefined): string | undefined {
  if (quantity?.value === undefined) return undefined;
  const unit = quantity.unit ?? quantity.code ?? '';
  return `${Number(quantity.value.toFixed(2))}${unit ? ` ${unit}` : ''}`;
}

export function observationValue(observation: Observation): string {
  const direct =
    quantityText(observation.valueQuantity) ??
    observation.valueString ??
    (observation.valueCodeableConcept ? conceptText(observation.valueCodeableConcept) : undefined);
  if (direct) return direct;
  const components = (observation.component ?? [])
    .map((component) => quantityText(component.valueQuantity))
    .filter((value): value is string => value !== undefined);
  // Blood pressure and similar panels: "128/82 mm[Hg]".
  if (components.length > 0) {
    const unit = observation.component?.[0]?.valueQuantity?.unit ?? '';
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
    : (medication.medicationReference?.display ?? 'medication');
}

export function encounterDate(encounter: Encounter): string | undefined {
  return encounter.period?.start ?? encounter.period?.end;
}

export function encounterText(encounter: Encounter): string {
  const type = encounter.type?.[0]
    ? conceptText(encounter.type[0])
    : (encounter.class?.display ?? encounter.class?.code ?? 'encounter');
  const reason = encounter.reasonCode?.[0] ? ` for ${conceptText(encounter.reasonCode[0])}` : '';
  return `${type}${reason}`;
}

/** One line of free text: notes go into single summary lines so each keeps its citation. */
export function oneLine(text: string, maxLength: number): string {
  const flat = text.replace(/\s+/g, ' ').trim();
  return flat.length <= maxLength ? flat : `${flat.slice(0, maxLength - 1).trimEnd()}…`;
}

const sectionHeading =
  /^\s*(subjective|objective|assessment(?:\s*(?:and|&)\s*plan)?|plan|a\/p|impression|history of present illness|hpi|s|o|a|p)\s*[:-]\s*/i;

/** The assessment and plan of a sectioned note (SOAP, A/P), or undefined when it has no such section. */
export function assessmentAndPlan(noteText: string): string | undefined {
  const wanted: string[] = [];
  let capturing = false;
  for (const line of noteText.split(/\r?\n/)) {
    const heading = sectionHeading.exec(line);
    if (heading) {
      const name = heading[1].toLowerCase();
      capturing =
        name.startsWith('assessment') ||
        name === 'plan' ||
        name === 'a/p' ||
        name === 'impression' ||
        name === 'a' ||
        name === 'p';
      const rest = line.slice(heading[0].length).trim();
      if (capturing && rest) wanted.push(rest);
      continue;
    }
    if (capturing && line.trim()) wanted.push(line.trim());
  }
  return wanted.length > 0 ? wanted.join(' ') : undefined;
}
