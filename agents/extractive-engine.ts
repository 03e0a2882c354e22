import type { Encounter, Observation } from 'fhir/r4.js';
import type { PatientRecord } from '../fhir/patient-record.ts';
import type { DraftEngine, DraftKind, DraftRequest, DraftResult, NudgeInput } from './draft-engine.ts';
import {
  assessmentAndPlan,
  conceptText,
  day,
  encounterDate,
  encounterText,
  isActiveCondition,
  isActiveMedication,
  medicationName,
  observationDate,
  observationValue,
  oneLine,
} from './record-text.ts';

/**
 * The model-free draft engine: a structured summary extracted from the record, every line citing
 * its source. It is the embedded default, and the scaffold the model's output is checked against.
 * Its text is verified by the pipeline like any engine's; every record text in it is one inert line.
 */
const extractiveEngineVersion = '1.0.0';

const titleLines: Record<DraftKind, string> = {
  'progress-summary': '## Progress summary (AI draft - not final until signed by a clinician)',
  'previsit-briefing': '## Pre-visit briefing (AI draft - not final until signed by a clinician)',
};

const sectionTitles = {
  'progress-summary': [
    'Active problems',
    'Medications',
    'Allergies',
    'Recent results',
    'Recent encounters',
    'Latest notes: assessment and plan',
    'Suggested actions',
  ],
  'previsit-briefing': [
    'Visit urgency',
    'Open problems',
    'Changes since the last visit',
    'Pending results',
    'Medications',
    'Allergies',
    'Latest notes: assessment and plan',
    'Suggested actions',
  ],
} as const satisfies Record<DraftKind, readonly string[]>;

type SectionTitle<Kind extends DraftKind> = (typeof sectionTitles)[Kind][number];

/** The heading lines this engine's template emits per draft kind: the verifier's allow-list for its drafts. */
export const extractiveHeadings: Record<DraftKind, readonly string[]> = {
  'progress-summary': [
    titleLines['progress-summary'],
    ...sectionTitles['progress-summary'].map((title) => `${title}:`),
  ],
  'previsit-briefing': [
    titleLines['previsit-briefing'],
    ...sectionTitles['previsit-briefing'].map((title) => `${title}:`),
  ],
};

const limits = { results: 12, encounters: 5, notes: 3, noteChars: 600 };

const cite = (resource: { resourceType: string; id?: string }) => `[${resource.resourceType}/${resource.id}]`;

function latestResultsByCode(observations: Observation[]): Observation[] {
  const latest = new Map<string, Observation>();
  for (const observation of observations) {
    if (['entered-in-error', 'cancelled'].includes(observation.status)) continue;
    const code = observation.code?.coding?.[0]?.code ?? conceptText(observation.code);
    const current = latest.get(code);
    if (!current || (observationDate(observation) ?? '') > (observationDate(current) ?? ''))
      latest.set(code, observation);
  }
  return [...latest.values()]
    .sort((left, right) => (observationDate(right) ?? '').localeCompare(observationDate(left) ?? ''))
    .slice(0, limits.results);
}

function problemLines(record: PatientRecord): string[] {
  const active = record.conditions.filter(isActiveCondition);
  if (active.length === 0) return [`- No active problems in the retrieved record ${cite(record.patient)}`];
  return active.map((condition) => {
    const since = condition.onsetDateTime ?? condition.recordedDate;
    return `- ${conceptText(condition.code)}${since ? ` (since ${day(since)})` : ''} ${cite(condition)}`;
  });
}

function medicationLines(record: PatientRecord): string[] {
  const active = record.medications.filter(isActiveMedication);
  if (active.length === 0)
    return [`- No active medication orders in the retrieved record ${cite(record.patient)}`];
  return active.map((medication) => {
    const dosage = medication.dosageInstruction?.[0]?.text;
    return `- ${medicationName(medication)}${dosage ? `, ${oneLine(dosage, 80)}` : ''}${medication.status === 'on-hold' ? ' (on hold)' : ''} ${cite(medication)}`;
  });
}

function allergyLines(record: PatientRecord): string[] {
  const current = record.allergies.filter(
    (allergy) => allergy.clinicalStatus?.coding?.[0]?.code !== 'resolved',
  );
  if (current.length === 0)
    return [`- No allergies recorded in the retrieved record ${cite(record.patient)}`];
  return current.map((allergy) => {
    const reaction = allergy.reaction?.[0]?.manifestation?.[0];
    return `- ${conceptText(allergy.code)}${reaction ? ` (${conceptText(reaction)})` : ''} ${cite(allergy)}`;
  });
}

function resultLines(record: PatientRecord): string[] {
  return latestResultsByCode(record.observations).map(
    (observation) =>
      `- ${conceptText(observation.code)}: ${observationValue(observation)} on ${day(observationDate(observation))}${
        observation.status === 'preliminary' || observation.status === 'registered' ? ' (pending)' : ''
      } ${cite(observation)}`,
  );
}

function pastEncounters(record: PatientRecord): Encounter[] {
  return record.encounters
    .filter((encounter) => encounter.id !== record.encounter.id && encounter.status === 'finished')
    .sort((left, right) => (encounterDate(right) ?? '').localeCompare(encounterDate(left) ?? ''));
}

function encounterLines(record: PatientRecord): string[] {
  return pastEncounters(record)
    .slice(0, limits.encounters)
    .map((encounter) => `- ${day(encounterDate(encounter))}: ${encounterText(encounter)} ${cite(encounter)}`);
}

function noteLines(record: PatientRecord): string[] {
  return record.notes
    .map((note) => ({ note, plan: assessmentAndPlan(note.text) }))
    .filter((entry) => entry.plan)
    .slice(-limits.notes)
    .reverse()
    .map(
      ({ note, plan }) =>
        `- ${day(note.date)}: ${oneLine(plan as string, limits.noteChars)} [${note.reference}]`,
    );
}

function nudgeLines(nudges: NudgeInput[]): string[] {
  return nudges.map((nudge) => {
    const grade = nudge.guideline.grade ? `, grade ${nudge.guideline.grade}` : '';
    const evidence = nudge.evidence.map((reference) => `[${reference}]`).join(' ');
    return `- ${oneLine(nudge.suggestedAction, 240)} (${nudge.guideline.label}${grade}; rule ${nudge.ruleId} v${nudge.ruleVersion}) ${evidence}`;
  });
}

/** A section of the kind's template; its title must be one of that kind's allow-listed headings. */
function sectionOf<Kind extends DraftKind>(_kind: Kind) {
  return (title: SectionTitle<Kind>, lines: string[]): string[] =>
    lines.length > 0 ? ['', `${title}:`, ...lines] : [];
}

function changesSinceLastVisit(record: PatientRecord): string[] {
  const lastVisit = encounterDate(pastEncounters(record)[0] ?? record.encounter) ?? '';
  const newer = (date: string | undefined) => Boolean(date && date > lastVisit);
  return [
    ...record.conditions
      .filter((condition) => newer(condition.recordedDate ?? condition.onsetDateTime))
      .map((condition) => `- New problem: ${conceptText(condition.code)} ${cite(condition)}`),
    ...record.medications
      .filter((medication) => newer(medication.authoredOn))
      .map(
        (medication) =>
          `- Medication ${medication.status}: ${medicationName(medication)} ${cite(medication)}`,
      ),
    ...record.observations
      .filter((observation) => newer(observationDate(observation)))
      .map(
        (observation) =>
          `- New result: ${conceptText(observation.code)} ${observationValue(observation)} ${cite(observation)}`,
      ),
  ];
}

function progressSummary(record: PatientRecord, nudges: NudgeInput[]): string[] {
  const encounter = record.encounter;
  const section = sectionOf('progress-summary');
  return [
    titleLines['progress-summary'],
    `Encounter: ${encounterText(encounter)} on ${day(encounterDate(encounter))} ${cite(encounter)}`,
    ...section('Active problems', problemLines(record)),
    ...section('Medications', medicationLines(record)),
    ...section('Allergies', allergyLines(record)),
    ...section('Recent results', resultLines(record)),
    ...section('Recent encounters', encounterLines(record)),
    ...section('Latest notes: assessment and plan', noteLines(record)),
    ...section('Suggested actions', nudgeLines(nudges)),
  ];
}

function previsitBriefing(record: PatientRecord, nudges: NudgeInput[]): string[] {
  const encounter = record.encounter;
  const urgent = nudges.filter((nudge) => nudge.urgency);
  const pending = record.observations.filter((observation) =>
    ['registered', 'preliminary'].includes(observation.status),
  );
  const section = sectionOf('previsit-briefing');
  return [
    titleLines['previsit-briefing'],
    `Visit: ${encounterText(encounter)} planned for ${day(encounterDate(encounter))} ${cite(encounter)}`,
    ...section(
      'Visit urgency',
      urgent.map(
        (nudge) =>
          `- ${nudge.urgency?.level}: ${oneLine(nudge.urgency?.reason ?? '', 200)} ${nudge.evidence.map((reference) => `[${reference}]`).join(' ')}`,
      ),
    ),
    ...section('Open problems', problemLines(record)),
    ...section('Changes since the last visit', changesSinceLastVisit(record)),
    ...section(
      'Pending results',
      pending.map(
        (observation) =>
          `- ${conceptText(observation.code)} ordered ${day(observationDate(observation))} ${cite(observation)}`,
      ),
    ),
    ...section('Medications', medicationLines(record)),
    ...section('Allergies', allergyLines(record)),
    ...section('Latest notes: assessment and plan', noteLines(record)),
    ...section('Suggested actions', nudgeLines(nudges)),
  ];
}

export function createExtractiveEngine(): DraftEngine {
  return {
    id: 'extractive',
    version: extractiveEngineVersion,
    async draft({ kind, record, nudges }: DraftRequest): Promise<DraftResult> {
      const lines =
        kind === 'previsit-briefing' ? previsitBriefing(record, nudges) : progressSummary(record, nudges);
      return {
        kind,
        title: kind === 'previsit-briefing' ? 'AI draft pre-visit briefing' : 'AI draft progress summary',
        text: lines.join('\n'),
        headings: extractiveHeadings[kind],
        engine: { id: 'extractive', version: extractiveEngineVersion },
      };
    },
  };
}
