import type { Encounter, Flag } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { VisitUrgency } from '../rules/evaluate.ts';
import type { Urgency, UrgencyLevel } from './urgency.ts';

/**
 * The visit's urgency from the patient's answers, recorded for the care team as a Flag (soon or urgent; routine
 * raises none): active, about the patient, for the visit, naming the reasons and pointing at the answers. The
 * briefing and the CDS Hooks urgency card read it back. Conditional create on an identifier derived from the
 * visit, so a retried submission does not raise it twice. The reasons are the site's own words from
 * red-flags.yaml, never the patient's free text.
 */
const flagCodes: Record<
  Exclude<UrgencyLevel, 'routine'>,
  { code: string; display: string; heading: string }
> = {
  urgent: {
    code: 'urgent-intake-answer',
    display: 'Urgent answer in pre-visit intake',
    heading: 'Urgent pre-visit intake answer',
  },
  soon: {
    code: 'soon-intake-answer',
    display: 'Pre-visit intake answer: see soon',
    heading: 'Pre-visit intake answer to see soon',
  },
};

export async function raiseUrgencyFlag(
  fhir: FhirClient,
  options: {
    patientId: string;
    /** `Encounter/<id>` or `Appointment/<id>`: the link's visit, which the Flag's identifier is derived from. */
    visitKey: string;
    encounterId?: string;
    responseId: string;
    urgency: Urgency;
    identifierSystem: string;
    now: Date;
  },
): Promise<Flag | undefined> {
  const level = options.urgency.level;
  if (level === 'routine') return undefined;
  const identifier = {
    system: `${options.identifierSystem}/urgency-flag`,
    value: options.visitKey,
  };
  const reasons = options.urgency.reasons
    .filter((reason) => reason.level === level)
    .map((reason) => reason.reason)
    .join('; ');
  const { code, display, heading } = flagCodes[level];
  const flag: Flag = {
    resourceType: 'Flag',
    identifier: [identifier],
    status: 'active',
    category: [
      {
        coding: [
          {
            system: 'http://terminology.hl7.org/CodeSystem/flag-category',
            code: 'clinical',
            display: 'Clinical',
          },
        ],
      },
    ],
    code: {
      coding: [{ system: `${options.identifierSystem}/flag`, code, display }],
      text: `${heading}: ${reasons} (see QuestionnaireResponse/${options.responseId})`,
    },
    subject: { reference: `Patient/${options.patientId}` },
    ...(options.encounterId ? { encounter: { reference: `Encounter/${options.encounterId}` } } : {}),
    period: { start: options.now.toISOString() },
  };
  const written = await fhir.create(flag, {
    ifNoneExist: new URLSearchParams({ identifier: `${identifier.system}|${identifier.value}` }).toString(),
  });
  return written.resource;
}

/** The level a Flag the intake wrote stands for (undefined: not one of the intake's). */
function levelOf(flag: Flag): Exclude<UrgencyLevel, 'routine'> | undefined {
  const codes = (flag.code?.coding ?? []).map((coding) => coding.code);
  if (codes.includes(flagCodes.urgent.code)) return 'urgent';
  if (codes.includes(flagCodes.soon.code)) return 'soon';
  return undefined;
}

/**
 * The visit's urgency as the intake recorded it, read back from the EHR (the active Flags it wrote), for the
 * CDS Hooks urgency card: what the patient reported stands until someone closes the Flag.
 */
export async function urgencyFromFlags(
  fhir: FhirClient,
  query: { patientId: string; encounterId?: string },
  identifierSystem: string,
): Promise<VisitUrgency | undefined> {
  if (!query.encounterId) return undefined;
  const system = `${identifierSystem}/urgency-flag`;
  let flags = await fhir.search<Flag>('Flag', { identifier: `${system}|Encounter/${query.encounterId}` });
  if (flags.length === 0) {
    // Answered for the visit's Appointment before the Encounter existed: the Flag is keyed on the Appointment.
    const encounter = await fhir.read<Encounter>('Encounter', query.encounterId).catch(() => undefined);
    for (const reference of encounter?.appointment ?? []) {
      if (!/^Appointment\/[A-Za-z0-9\-.]{1,64}$/.test(reference.reference ?? '')) continue;
      flags = [
        ...flags,
        ...(await fhir.search<Flag>('Flag', { identifier: `${system}|${reference.reference}` })),
      ];
    }
  }
  const reasons = flags
    .filter((flag) => flag.status === 'active' && flag.subject?.reference === `Patient/${query.patientId}`)
    .flatMap((flag) => {
      const level = levelOf(flag);
      return level
        ? [{ ruleId: 'pre-visit-intake', level, reason: flag.code?.text ?? flagCodes[level].display }]
        : [];
    });
  if (reasons.length === 0) return undefined;
  return { level: reasons.some((reason) => reason.level === 'urgent') ? 'urgent' : 'soon', reasons };
}
