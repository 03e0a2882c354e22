import type { Flag, QuestionnaireResponse, QuestionnaireResponseItem } from 'fhir/r4.js';
import type { PatientRecord } from '../fhir/patient-record.ts';
import { conceptText, isActiveMedication, medicationName, oneLine } from './record-text.ts';

/**
 * The patient's own pre-visit answers in the briefing: each answer cites `[QuestionnaireResponse/id]`, an urgent
 * answer's care-team Flag cites `[Flag/id]`, and what the patient said that the record does not hold (a medicine
 * not on the medication list, an allergy not on the allergy list, "no allergies" against a recorded one) is
 * listed for the clinician, never written to the lists. The answers are the patient's words: each is one inert,
 * quoted line (no heading, no citation of its own), like every record text. The section headings cite the
 * answers, so the verifier checks them like any line.
 *
 * The linkIds read here are those of the base questionnaire in config/intake/ (medicines, allergies,
 * takes-medicines, has-allergies); generated follow-ups are shown with their own text.
 */
const maxAnswerCharacters = 200;

/**
 * Where the intake records the Appointment answers were given for (R4's QuestionnaireResponse has no element
 * for it); the writer (src/patient-intake/questionnaire-response.ts) uses this same URL.
 */
export const appointmentExtensionUrl = 'urn:ehr-draft-agent:patient-intake:appointment';

/** The Appointments the visit's Encounter names: answers given for one of them before the Encounter existed are the visit's. */
function visitAppointments(record: PatientRecord): Set<string> {
  return new Set(
    (record.encounter.appointment ?? []).flatMap((reference) =>
      reference.reference?.startsWith('Appointment/') ? [reference.reference] : [],
    ),
  );
}

/** The visit's completed intake answers, the latest first. */
function visitResponses(record: PatientRecord): QuestionnaireResponse[] {
  const visit = `Encounter/${record.encounter.id}`;
  const appointments = visitAppointments(record);
  return (record.additional ?? [])
    .filter(
      (resource): resource is QuestionnaireResponse =>
        resource.resourceType === 'QuestionnaireResponse' &&
        resource.status === 'completed' &&
        (resource.encounter?.reference === visit ||
          (!resource.encounter &&
            (resource.extension ?? []).some(
              (extension) =>
                extension.url === appointmentExtensionUrl &&
                appointments.has(extension.valueReference?.reference ?? ''),
            ))),
    )
    .sort((left, right) => (right.authored ?? '').localeCompare(left.authored ?? ''));
}

function answerWords(item: QuestionnaireResponseItem): string {
  return (item.answer ?? [])
    .map((answer) => {
      if (answer.valueBoolean !== undefined) return answer.valueBoolean ? 'yes' : 'no';
      if (answer.valueInteger !== undefined) return String(answer.valueInteger);
      if (answer.valueCoding) return answer.valueCoding.display ?? answer.valueCoding.code ?? '';
      return answer.valueString ?? '';
    })
    .filter(Boolean)
    .join(', ');
}

function itemOf(response: QuestionnaireResponse, linkId: string): QuestionnaireResponseItem | undefined {
  return response.item?.find((item) => item.linkId === linkId);
}

/** A list the patient typed ("ibuprofen daily, metformin") as its entries. */
function entries(text: string): string[] {
  return text
    .split(/[,;\n]|\band\b|\by\b/i)
    .map((entry) => entry.trim())
    .filter((entry) => entry.length >= 3)
    .slice(0, 12);
}

/** Whether a name the patient gave matches a name on the record's list (a shared word of four letters or more). */
function onList(entry: string, names: string[]): boolean {
  const words = entry.toLowerCase().match(/[\p{L}\p{N}]{4,}/gu) ?? [];
  const listed = names.join(' ').toLowerCase();
  return words.some((word) => listed.includes(word));
}

function discrepancies(record: PatientRecord, response: QuestionnaireResponse, cite: string): string[] {
  const lines: string[] = [];
  const medications = record.medications.filter(isActiveMedication);
  const medicationNames = medications.map(medicationName);
  const allergies = record.allergies.filter(
    (allergy) => allergy.clinicalStatus?.coding?.[0]?.code !== 'resolved',
  );
  const allergyNames = allergies.map((allergy) => conceptText(allergy.code));
  const reportedMedicines = itemOf(response, 'medicines');
  for (const entry of entries(reportedMedicines ? answerWords(reportedMedicines) : '')) {
    if (!onList(entry, medicationNames))
      lines.push(`- Reports "${oneLine(entry, 120)}": not on the medication list ${cite}`);
  }
  const reportedAllergies = itemOf(response, 'allergies');
  for (const entry of entries(reportedAllergies ? answerWords(reportedAllergies) : '')) {
    if (!onList(entry, allergyNames))
      lines.push(`- Reports an allergy, "${oneLine(entry, 120)}": not on the allergy list ${cite}`);
  }
  if (itemOf(response, 'has-allergies')?.answer?.[0]?.valueBoolean === false && allergies.length > 0) {
    const recorded = allergies.map((allergy) => `[AllergyIntolerance/${allergy.id}]`).join(' ');
    lines.push(`- Says no allergies; the record lists ${allergies.length} ${cite} ${recorded}`);
  }
  if (itemOf(response, 'takes-medicines')?.answer?.[0]?.valueBoolean === false && medications.length > 0) {
    const recorded = medications.map((medication) => `[MedicationRequest/${medication.id}]`).join(' ');
    lines.push(`- Says no medicines; the record lists ${medications.length} active ${cite} ${recorded}`);
  }
  return lines;
}

/** Active Flags the intake raised for this visit, urgent first (their text is the site's wording, never the patient's). */
function urgencyFlags(record: PatientRecord): { flag: Flag; level: 'Urgent' | 'Soon' }[] {
  const visit = `Encounter/${record.encounter.id}`;
  const appointments = visitAppointments(record);
  return (record.additional ?? [])
    .filter(
      (resource): resource is Flag =>
        resource.resourceType === 'Flag' &&
        resource.status === 'active' &&
        (resource.encounter?.reference === visit ||
          // Raised for an Appointment before its Encounter existed: keyed on the Appointment.
          (!resource.encounter &&
            (resource.identifier ?? []).some(
              (identifier) =>
                identifier.system?.endsWith('/urgency-flag') && appointments.has(identifier.value ?? ''),
            ))),
    )
    .flatMap((flag): { flag: Flag; level: 'Urgent' | 'Soon' }[] => {
      const codes = (flag.code?.coding ?? []).map((coding) => coding.code);
      if (codes.includes('urgent-intake-answer')) return [{ flag, level: 'Urgent' }];
      if (codes.includes('soon-intake-answer')) return [{ flag, level: 'Soon' }];
      return [];
    })
    .sort((left, right) => right.level.localeCompare(left.level));
}

/** The `Type/id` references a line cites. */
export function citedIn(line: string): string[] {
  return [...line.matchAll(/\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})\]/g)].map((match) => match[1] as string);
}

/** The briefing's lines from the patient's answers; none when the patient has not answered. */
export function patientAnswerSections(record: PatientRecord): string[] {
  const [response] = visitResponses(record);
  if (!response?.id) return [];
  const cite = `[QuestionnaireResponse/${response.id}]`;
  const answers = (response.item ?? [])
    .filter((item) => (item.answer ?? []).length > 0)
    .map((item) => {
      const generated = (item.extension ?? []).some((extension) =>
        extension.url.endsWith(':generated-question'),
      );
      return `- ${oneLine(item.text ?? item.linkId, 160)}${generated ? ' (follow-up question)' : ''}: "${oneLine(answerWords(item), maxAnswerCharacters)}" ${cite}`;
    });
  const flags = urgencyFlags(record).map(
    ({ flag, level }) =>
      `- ${level}: ${oneLine(flag.code?.text ?? 'see the answers', 200)} [Flag/${flag.id}] ${cite}`,
  );
  const found = discrepancies(record, response, cite);
  return [
    '',
    `What the patient answered before the visit (${oneLine(response.authored?.slice(0, 10) ?? 'date unknown', 10)}) ${cite}:`,
    ...flags,
    ...answers,
    ...(found.length > 0
      ? ['', `Discrepancies between the patient's answers and the record ${cite}:`, ...found]
      : []),
  ];
}
