import type { Communication, Patient } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { type LinkSealer, newNonce, sealInvitation } from './invitation-token.ts';
import type { QuestionnaireSet } from './questionnaire.ts';

/**
 * The invitation handed to the EHR: a Communication about the patient, for the visit, in `preparation` (the
 * EHR's portal sends it and marks it sent), its payload the one-time link in the patient's language. Written by
 * conditional create on an identifier derived from the visit, so repeated events for the same encounter find
 * the first invitation instead of sending the patient a second link. A visit booked as an Appointment is
 * invited once: the Encounter that later names that Appointment finds the Appointment's invitation.
 */
const invitationText: Record<string, (link: string) => string> = {
  en: (link) => `Please answer a few questions before your visit, so your care team can prepare: ${link}`,
  es: (link) =>
    `Por favor, responda unas preguntas antes de su cita para que su equipo médico pueda prepararse: ${link}`,
};

function invitationIdentifier(identifierSystem: string, visitKey: string) {
  return { system: `${identifierSystem}/invitation`, value: visitKey };
}

/** What an invitation is for: the patient and one visit, an Encounter or an Appointment. */
export interface InvitedVisit {
  patientId: string;
  encounterId?: string;
  appointmentId?: string;
  /** Other resources the same visit goes by (an Encounter's Appointments): invited under those, not again. */
  alsoKnownAs?: string[];
}

function interviewUrl(publicUrl: string, token: string): string {
  return `${publicUrl}/intake/${token}`;
}

export interface InvitationOptions {
  fhir: FhirClient;
  sealer: LinkSealer;
  questionnaires: QuestionnaireSet;
  identifierSystem: string;
  publicUrl: string;
  linkLifetimeHours: number;
  now?: () => Date;
}

export async function ensureInvitation(
  visit: InvitedVisit,
  options: InvitationOptions,
): Promise<{ communication: Communication; created: boolean }> {
  const { patientId, encounterId, appointmentId } = visit;
  const key = encounterId ? `Encounter/${encounterId}` : `Appointment/${appointmentId}`;
  const identifier = invitationIdentifier(options.identifierSystem, key);
  const ifNoneExist = new URLSearchParams({
    identifier: `${identifier.system}|${identifier.value}`,
  }).toString();
  // Checked first so the patient is not read for every repeated event of a visit already invited.
  for (const known of [key, ...(visit.alsoKnownAs ?? [])]) {
    const [existing] = await options.fhir.search<Communication>('Communication', {
      identifier: `${identifier.system}|${known}`,
    });
    if (existing) return { communication: existing, created: false };
  }
  const patient = await options.fhir.read<Patient>('Patient', patientId);
  const language = options.questionnaires.languageFor(patient);
  const now = options.now?.() ?? new Date();
  const token = sealInvitation(options.sealer, {
    patientId,
    ...(encounterId ? { encounterId } : { appointmentId }),
    expiresAt: now.getTime() + options.linkLifetimeHours * 3_600_000,
    nonce: newNonce(),
  });
  const link = interviewUrl(options.publicUrl, token);
  const text = (invitationText[language] ?? (invitationText.en as (link: string) => string))(link);
  const communication: Communication = {
    resourceType: 'Communication',
    identifier: [identifier],
    status: 'preparation',
    category: [
      {
        coding: [
          { system: 'http://terminology.hl7.org/CodeSystem/communication-category', code: 'reminder' },
        ],
        text: 'Pre-visit questions',
      },
    ],
    language,
    subject: { reference: `Patient/${patientId}` },
    // Communication.encounter is Reference(Encounter) only; a booked Appointment is what it is `about`.
    ...(encounterId
      ? { encounter: { reference: `Encounter/${encounterId}` } }
      : { about: [{ reference: `Appointment/${appointmentId}` }] }),
    recipient: [{ reference: `Patient/${patientId}` }],
    payload: [
      { contentString: text },
      { contentAttachment: { contentType: 'text/html', url: link, title: 'Pre-visit questions' } },
    ],
  };
  const written = await options.fhir.create(communication, { ifNoneExist });
  return { communication: written.resource, created: written.created };
}

/** The link an invitation carries (for the sandbox's launch page and tests). */
export function invitationLink(communication: Communication): string | undefined {
  return communication.payload?.find((payload) => payload.contentAttachment?.url)?.contentAttachment?.url;
}
