import type { Condition, Encounter, FhirResource, MedicationRequest, Patient } from 'fhir/r4.js';
import type { PatientRecord } from './patient-record.ts';

/**
 * The record as of the visit (issue 19, items 2 and 6): a draft for an encounter may use only what
 * existed by the end of that encounter. The retrieved record holds the patient's whole history, later
 * admissions, results and a death among it; this cuts a copy to the visit before rules, engines and the
 * citation verifier see it, so nothing dated after the visit can appear in a draft or be cited.
 *
 * A resource is after the visit when one of the dates that say when it happened or became known
 * (recorded, issued, authored) begins after the cutoff. A partial date (`1987`, `1987-07`, a date without
 * a time) begins at its first instant in the visit's own time zone, so something dated on the visit's day
 * counts as of the visit. A resource with none of its date elements, or with only dates the service
 * cannot place on the time line (an onset as an age or as free text), is kept: undated facts such as an
 * allergy with no recorded date or a Medication are part of the chart at any visit, and leaving them out
 * would hide them from every draft.
 */

/** Statuses of an encounter that has not happened yet: its draft is a briefing, written from the record as of now. */
const beforeTheVisit = new Set<Encounter['status']>(['planned', 'arrived', 'triaged']);

/**
 * The instant the record is cut at: the end of the encounter (period.end, else the end of its start's day
 * in its own time zone, else now); for a visit that has not taken place, now. Never later than now: what
 * is dated in the future (a scheduled appointment) did not exist by then either.
 */
export function visitCutoff(encounter: Encounter, now: Date): Date {
  if (beforeTheVisit.has(encounter.status)) return now;
  const end = fhirDateRange(encounter.period?.end, offsetOf(encounter.period?.start));
  const startDay = fhirDateRange(encounter.period?.start?.slice(0, 10), offsetOf(encounter.period?.start));
  const cutoff = end?.end ?? startDay?.end ?? now.getTime();
  return new Date(Math.min(cutoff, now.getTime()));
}

/**
 * A copy of the record holding only what existed by the visit's cutoff, with `asOf` set to it. Conditions
 * that abated after the visit are active in the copy (the later abatement removed); medication orders that
 * ended after the visit are active in it; the Patient's death, when it came after the visit, is not in it.
 * The record's own encounter is always kept (a planned visit starts after now). The input is not changed.
 */
export function recordAsOfVisit(record: PatientRecord, now: Date = new Date()): PatientRecord {
  const cutoff = visitCutoff(record.encounter, now);
  const at = cutoff.getTime();
  // Partial dates are read in the visit's time zone, the one its clinicians wrote them in.
  const offset = offsetOf(record.encounter.period?.end ?? record.encounter.period?.start);
  const ofThisVisit = visitMembers(record.encounter);
  const existed = <T extends FhirResource>(resource: T) =>
    ofThisVisit(resource) || !datedAfter(resource, at, offset);
  const encounterKey = `Encounter/${record.encounter.id}`;
  const noteResources = record.noteResources.filter(existed);
  const keptNotes = new Set(noteResources.map((document) => `DocumentReference/${document.id}`));
  const notes = record.notes.filter((note) => keptNotes.has(note.reference));
  const omitted = record.omitted?.filter((omission) => keptNotes.has(omission.reference));
  return {
    ...record,
    patient: patientAsOf(record.patient, at, offset),
    conditions: record.conditions.filter(existed).map((condition) => conditionAsOf(condition, at, offset)),
    medications: record.medications
      .filter(existed)
      .map((medication) => medicationAsOf(medication, at, offset)),
    allergies: record.allergies.filter(existed),
    observations: record.observations.filter(existed),
    encounters: record.encounters.filter(
      (encounter) => `Encounter/${encounter.id}` === encounterKey || existed(encounter),
    ),
    procedures: record.procedures.filter(existed),
    immunizations: record.immunizations.filter(existed),
    noteResources,
    notes,
    ...(omitted ? { omitted } : {}),
    ...(record.additional ? { additional: record.additional.filter(existed) } : {}),
    asOf: cutoff.toISOString(),
  };
}

/**
 * What belongs to the visit itself is part of its record whatever its date: the visit's own note signed the
 * next morning, the discharge diagnosis coded after the stay ended, a result of a sample taken at the visit.
 * Such resources name the encounter (`encounter`, `context`, DocumentReference's `context.encounter`), or
 * the encounter names them (its diagnoses).
 */
function visitMembers(encounter: Encounter): (resource: FhirResource) => boolean {
  const id = encounter.id ?? '';
  const escaped = id.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
  const pointsHere = new RegExp(`(^|/)Encounter/${escaped}(/_history/[^/]+)?$`);
  const isHere = (reference: unknown) =>
    id !== '' &&
    isObject(reference) &&
    typeof reference.reference === 'string' &&
    pointsHere.test(reference.reference);
  const diagnoses = new Set(
    (encounter.diagnosis ?? [])
      .map(
        (diagnosis) =>
          /(?:^|\/)Condition\/([^/]+)(?:\/_history\/[^/]+)?$/.exec(diagnosis.condition?.reference ?? '')?.[1],
      )
      .filter((conditionId): conditionId is string => conditionId !== undefined),
  );
  return (resource) => {
    const fields = resource as unknown as Record<string, unknown>;
    if (resource.resourceType === 'Condition' && resource.id && diagnoses.has(resource.id)) return true;
    const context = fields.context;
    const contextEncounters = isObject(context) && Array.isArray(context.encounter) ? context.encounter : [];
    return isHere(fields.encounter) || isHere(context) || contextEncounters.some(isHere);
  };
}

/**
 * The elements that date each type: when it happened, was recorded, issued or authored. Each name is
 * read as a plain date (`issued`), as a choice type (`effectiveDateTime`, `effectiveInstant`,
 * `effectivePeriod`) and as a Period (its start). Ends of periods are not here: a stay or a care plan
 * that began before the visit existed at it. ServiceRequest and DeviceRequest are dated by when they
 * were ordered, not by when they are to happen: an order made before the visit existed at it.
 */
const dateElements: Record<string, readonly string[]> = {
  Encounter: ['period'],
  Observation: ['effective', 'issued'],
  DocumentReference: ['date', 'context.period'],
  Condition: ['onset', 'recordedDate'],
  MedicationRequest: ['authoredOn'],
  Procedure: ['performed'],
  Immunization: ['occurrence', 'recorded'],
  AllergyIntolerance: ['onset', 'recordedDate'],
  MedicationStatement: ['effective', 'dateAsserted'],
  MedicationAdministration: ['effective'],
  MedicationDispense: ['whenPrepared', 'whenHandedOver'],
  ServiceRequest: ['authoredOn'],
  DiagnosticReport: ['effective', 'issued'],
  CarePlan: ['created', 'period'],
  CareTeam: ['period'],
  Goal: ['startDate'],
  DeviceRequest: ['authoredOn'],
  DeviceUseStatement: ['recordedOn'],
  FamilyMemberHistory: ['date'],
  Flag: ['period'],
  ImmunizationRecommendation: ['date'],
  RiskAssessment: ['occurrence'],
  ClinicalImpression: ['date', 'effective'],
  EpisodeOfCare: ['period'],
  NutritionOrder: ['dateTime'],
  Specimen: ['receivedTime', 'collection.collected'],
  Communication: ['sent', 'received'],
  CommunicationRequest: ['authoredOn'],
  ImagingStudy: ['started'],
  QuestionnaireResponse: ['authored'],
  DetectedIssue: ['identified'],
  Coverage: ['period'],
  Claim: ['created', 'billablePeriod'],
  ExplanationOfBenefit: ['created', 'billablePeriod'],
};

function datedAfter(resource: FhirResource, cutoff: number, offset: number): boolean {
  const elements = dateElements[resource.resourceType] ?? [];
  return elements.some((element) =>
    datesOf(resource, element).some((date) => startsAfter(date, cutoff, offset)),
  );
}

/** The date strings an element holds, however it is typed (see dateElements). */
function datesOf(resource: object, element: string): string[] {
  const path = element.split('.');
  let parent: unknown = resource;
  for (const step of path.slice(0, -1)) parent = isObject(parent) ? parent[step] : undefined;
  if (!isObject(parent)) return [];
  const name = path.at(-1) as string;
  const candidates = [
    parent[name],
    parent[`${name}DateTime`],
    parent[`${name}Instant`],
    (parent[`${name}Period`] as { start?: unknown } | undefined)?.start,
    isObject(parent[name]) ? (parent[name] as { start?: unknown }).start : undefined,
  ];
  return candidates.filter((value): value is string => typeof value === 'string');
}

function isObject(value: unknown): value is Record<string, unknown> {
  return typeof value === 'object' && value !== null;
}

function startsAfter(date: string | undefined, cutoff: number, offset: number): boolean {
  const range = fhirDateRange(date, offset);
  return range !== undefined && range.start > cutoff;
}

/** A condition abated after the visit was still there at it: the copy has no abatement and is active. */
function conditionAsOf(condition: Condition, cutoff: number, offset: number): Condition {
  const abated = datesOf(condition, 'abatement');
  if (abated.length === 0 || !abated.every((date) => startsAfter(date, cutoff, offset))) return condition;
  const {
    abatementDateTime: _dateTime,
    abatementPeriod: _period,
    abatementAge: _age,
    abatementRange: _range,
    abatementString: _string,
    ...stillActive
  } = condition;
  const clinicalStatus = condition.clinicalStatus?.coding?.some((coding) =>
    ['inactive', 'resolved', 'remission'].includes(coding.code ?? ''),
  )
    ? {
        coding: [
          {
            system: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
            code: 'active',
            display: 'Active',
          },
        ],
      }
    : condition.clinicalStatus;
  return { ...stillActive, ...(clinicalStatus ? { clinicalStatus } : {}) };
}

/**
 * An order that ended after the visit was active at it. R4's MedicationRequest has no stop date: the end
 * is known only from the order's own period (dispenseRequest.validityPeriod, a dosage's bounds). A stopped
 * or completed order without one keeps the status the server has now, since when it changed is unknown.
 */
function medicationAsOf(medication: MedicationRequest, cutoff: number, offset: number): MedicationRequest {
  if (medication.status !== 'stopped' && medication.status !== 'completed') return medication;
  const ends = [
    medication.dispenseRequest?.validityPeriod?.end,
    ...(medication.dosageInstruction ?? []).map((dosage) => dosage.timing?.repeat?.boundsPeriod?.end),
  ].filter((end): end is string => typeof end === 'string');
  if (ends.length === 0 || !ends.every((end) => startsAfter(end, cutoff, offset))) return medication;
  const { statusReason: _reason, ...active } = medication;
  return { ...active, status: 'active' };
}

/** The record as of the visit does not know a death after it (see deceasedAt for who is drafted at all). */
function patientAsOf(patient: Patient, cutoff: number, offset: number): Patient {
  if (!patient.deceasedDateTime || !startsAfter(patient.deceasedDateTime, cutoff, offset)) return patient;
  const { deceasedDateTime: _death, ...living } = patient;
  return living;
}

const fhirDatePattern =
  /^(\d{4})(?:-(\d{2})(?:-(\d{2})(?:T(\d{2}):(\d{2})(?::(\d{2})(?:\.(\d{1,9}))?)?(Z|[+-]\d{2}:\d{2})?)?)?)?$/;

/**
 * The instants a FHIR date, dateTime or instant covers, from its first to its last millisecond: `1987`
 * is the whole year, `1987-07-19` the whole day, a time one instant. Values without a zone are read in
 * `offsetMinutes` (east of UTC). Undefined for anything else: an outside value that is not a FHIR date
 * is treated as no date, never guessed at.
 */
export function fhirDateRange(
  value: string | undefined,
  offsetMinutes = 0,
): { start: number; end: number } | undefined {
  const match = value === undefined ? null : fhirDatePattern.exec(value.trim());
  if (!match) return undefined;
  const [, year, month, day, hour, minute, second, fraction, zone] = match;
  const numbers = [year, month, day, hour, minute, second].map((part) =>
    part === undefined ? undefined : Number(part),
  );
  const [y, mo, d, h, mi, s] = numbers as (number | undefined)[];
  if (mo !== undefined && (mo < 1 || mo > 12)) return undefined;
  if (d !== undefined && (d < 1 || d > 31)) return undefined;
  if ((h ?? 0) > 23 || (mi ?? 0) > 59 || (s ?? 0) > 60) return undefined;
  const zoneMinutes = zone === undefined ? offsetMinutes : zoneOffset(zone);
  const shift = zoneMinutes * 60_000;
  const milliseconds = fraction ? Number(fraction.slice(0, 3).padEnd(3, '0')) : 0;
  if (h !== undefined) {
    const instant = Date.UTC(y as number, (mo as number) - 1, d, h, mi, s ?? 0, milliseconds) - shift;
    return { start: instant, end: instant + (s === undefined ? 60_000 - 1 : 0) };
  }
  const start = Date.UTC(y as number, (mo ?? 1) - 1, d ?? 1) - shift;
  const next =
    d !== undefined
      ? Date.UTC(y as number, (mo as number) - 1, d + 1)
      : mo !== undefined
        ? Date.UTC(y as number, mo, 1)
        : Date.UTC((y as number) + 1, 0, 1);
  return { start, end: next - shift - 1 };
}

function zoneOffset(zone: string): number {
  if (zone === 'Z') return 0;
  const sign = zone.startsWith('-') ? -1 : 1;
  return sign * (Number(zone.slice(1, 3)) * 60 + Number(zone.slice(4, 6)));
}

/** The time zone a dateTime was written in, in minutes east of UTC (0 when it has none). */
function offsetOf(value: string | undefined): number {
  const zone = value === undefined ? undefined : /(Z|[+-]\d{2}:\d{2})$/.exec(value)?.[1];
  return zone && value && value.length > 10 ? zoneOffset(zone) : 0;
}
