import type { CodeableConcept, Encounter, HumanName } from 'fhir/r4.js';

/**
 * What people call the resources the review app names: an encounter by its type and date, a person by
 * their name. Clinicians recognise "Follow-up encounter, 20 Nov 2026" and "Dana Okafor"; they do not
 * recognise `Encounter/<uuid>`. The ids stay with the data for whoever needs them.
 */
export interface EncounterLabel {
  /** The encounter's type in words (type, else service type, else class). */
  type?: string;
  start?: string;
  end?: string;
}

/** HL7 v3 ActCode encounter classes, for servers that send only the code. */
const encounterClassNames: Record<string, string> = {
  AMB: 'Ambulatory visit',
  EMER: 'Emergency visit',
  FLD: 'Field visit',
  HH: 'Home health visit',
  IMP: 'Inpatient stay',
  ACUTE: 'Inpatient acute stay',
  NONAC: 'Inpatient non-acute stay',
  OBSENC: 'Observation stay',
  PRENC: 'Pre-admission visit',
  SS: 'Short stay',
  VR: 'Virtual visit',
};

/** At most this many characters of any label: a label names something, it does not tell its story. */
const maxLabelCharacters = 120;

function clean(value: string | undefined): string | undefined {
  const text = value?.replace(/\s+/g, ' ').trim();
  if (!text) return undefined;
  return text.length > maxLabelCharacters ? `${text.slice(0, maxLabelCharacters - 3)}...` : text;
}

export function conceptText(concept: CodeableConcept | undefined): string | undefined {
  if (!concept) return undefined;
  return clean(concept.text) ?? clean(concept.coding?.map((coding) => coding.display).find(Boolean));
}

export function encounterTypeText(encounter: Encounter): string | undefined {
  const classCode = encounter.class?.code;
  return (
    encounter.type?.map(conceptText).find(Boolean) ??
    conceptText(encounter.serviceType) ??
    clean(encounter.class?.display) ??
    (classCode ? encounterClassNames[classCode] : undefined)
  );
}

export function encounterLabel(encounter: Encounter): EncounterLabel {
  const type = encounterTypeText(encounter);
  const { start, end } = encounter.period ?? {};
  return { ...(type ? { type } : {}), ...(start ? { start } : {}), ...(end ? { end } : {}) };
}

/** A person's name as written (`text`), else given names then family name; the first usable name wins. */
export function personName(names: HumanName[] | undefined): string | undefined {
  for (const name of names ?? []) {
    const written =
      clean(name.text) ?? clean([...(name.prefix ?? []), ...(name.given ?? []), name.family].join(' '));
    if (written) return written;
  }
  return undefined;
}
