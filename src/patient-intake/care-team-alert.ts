import type { Flag } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { VisitUrgency } from '../rules/evaluate.ts';
import type { Urgency } from './urgency.ts';

/**
 * An urgent answer raises a Flag for the care team: active, about the patient, for the visit, naming the
 * reasons and pointing at the answers. Conditional create on an identifier derived from the visit, so a
 * retried submission does not raise it twice. The reasons are the site's own words from red-flags.yaml, never
 * the patient's free text.
 */
export async function raiseUrgentFlag(
  fhir: FhirClient,
  options: {
    patientId: string;
    encounterId: string;
    responseId: string;
    urgency: Urgency;
    identifierSystem: string;
    now: Date;
  },
): Promise<Flag> {
  const identifier = {
    system: `${options.identifierSystem}/urgent-flag`,
    value: `Encounter/${options.encounterId}`,
  };
  const reasons = options.urgency.reasons
    .filter((reason) => reason.level === 'urgent')
    .map((reason) => reason.reason)
    .join('; ');
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
      coding: [
        {
          system: `${options.identifierSystem}/flag`,
          code: 'urgent-intake-answer',
          display: 'Urgent answer in pre-visit intake',
        },
      ],
      text: `Urgent pre-visit intake answer: ${reasons} (see QuestionnaireResponse/${options.responseId})`,
    },
    subject: { reference: `Patient/${options.patientId}` },
    encounter: { reference: `Encounter/${options.encounterId}` },
    period: { start: options.now.toISOString() },
  };
  const written = await fhir.create(flag, {
    ifNoneExist: new URLSearchParams({ identifier: `${identifier.system}|${identifier.value}` }).toString(),
  });
  return written.resource;
}

/**
 * The visit's urgency as the intake raised it, read back from the EHR (the active Flags it wrote), for the
 * CDS Hooks urgency card: what the patient reported is urgent until someone closes the Flag.
 */
export async function urgencyFromFlags(
  fhir: FhirClient,
  query: { patientId: string; encounterId?: string },
  identifierSystem: string,
): Promise<VisitUrgency | undefined> {
  if (!query.encounterId) return undefined;
  const flags = await fhir.search<Flag>('Flag', {
    identifier: `${identifierSystem}/urgent-flag|Encounter/${query.encounterId}`,
  });
  const open = flags.filter(
    (flag) => flag.status === 'active' && flag.subject?.reference === `Patient/${query.patientId}`,
  );
  if (open.length === 0) return undefined;
  return {
    level: 'urgent',
    reasons: open.map((flag) => ({
      ruleId: 'pre-visit-intake',
      level: 'urgent' as const,
      reason: flag.code?.text ?? 'Urgent answer in pre-visit intake',
    })),
  };
}
