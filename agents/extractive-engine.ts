import type { Encounter, MedicationRequest, Observation } from 'fhir/r4.js';
import type { PatientRecord } from '../fhir/patient-record.ts';
import { withheldNotice } from './clinical-content-policy.ts';
import type { DraftEngine, DraftKind, DraftRequest, DraftResult, NudgeInput } from './draft-engine.ts';
import { patientAnswerSections } from './intake-answers.ts';
import { assessmentAndPlan } from './note-sections.ts';
import { problemList, problemName, withoutSemanticTags } from './problem-list.ts';
import {
  conceptText,
  day,
  encounterDate,
  encounterText,
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
const extractiveEngineVersion = '1.1.0';

/**
 * The title names the visit's date and cites the visit, so it is verified like any other line (a heading on the
 * allow-list could not carry a date). It ends with the draft marker that sign-off rewrites (fhir/draft-lifecycle.ts).
 */
function titleLine(kind: DraftKind, record: PatientRecord): string {
  const visit = `${day(encounterDate(record.encounter))} ${cite(record.encounter)}`;
  return kind === 'previsit-briefing'
    ? `## Pre-visit briefing for the visit of ${visit} (AI draft - not final until signed by a clinician)`
    : `## Progress summary of the visit of ${visit} (AI draft - not final until signed by a clinician)`;
}

const sectionTitles = {
  'progress-summary': [
    'Active problems',
    'Social history',
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
    'Social history',
    'Changes since the last visit',
    'Pending results',
    'Medications',
    'Allergies',
    'Latest notes: assessment and plan',
    'Suggested actions',
  ],
} as const satisfies Record<DraftKind, readonly string[]>;

type SectionTitle<Kind extends DraftKind> = (typeof sectionTitles)[Kind][number];

/**
 * The heading lines this engine's template emits uncited per draft kind: the verifier's allow-list for its drafts
 * (the dated title cites the visit instead).
 */
export const extractiveHeadings: Record<DraftKind, readonly string[]> = {
  'progress-summary': sectionTitles['progress-summary'].map((title) => `${title}:`),
  'previsit-briefing': sectionTitles['previsit-briefing'].map((title) => `${title}:`),
};

/**
 * How much each section shows: a draft a clinician reads in under a minute (about 40 lines for a patient with
 * hundreds of visits). What a capped section leaves out is counted ("and 12 more"), never silently dropped.
 */
const limits = {
  problems: 8,
  social: 4,
  medications: 6,
  allergies: 3,
  results: 4,
  encounters: 2,
  notes: 2,
  noteChars: 260,
  changes: 6,
  pending: 4,
};

/** Result categories that are questionnaires and social screening, not results a clinician follows. */
const notResults = new Set(['survey', 'social-history']);

const cite = (resource: { resourceType: string; id?: string }) => `[${resource.resourceType}/${resource.id}]`;

/** The first `limit` lines, and a counted line for the rest, citing the patient (the rest are not listed). */
function capped(lines: string[], limit: number, record: PatientRecord, what: string): string[] {
  if (lines.length <= limit) return lines;
  return [
    ...lines.slice(0, limit - 1),
    `- and ${lines.length - limit + 1} more ${what} ${cite(record.patient)}`,
  ];
}

function latestResultsByCode(observations: Observation[]): Observation[] {
  const latest = new Map<string, Observation>();
  for (const observation of observations) {
    if (['entered-in-error', 'cancelled'].includes(observation.status)) continue;
    const categories = (observation.category ?? []).flatMap((category) =>
      (category.coding ?? []).map((coding) => coding.code),
    );
    if (categories.some((category) => category && notResults.has(category))) continue;
    const code = observation.code?.coding?.[0]?.code ?? conceptText(observation.code);
    const current = latest.get(code);
    if (!current || (observationDate(observation) ?? '') > (observationDate(current) ?? ''))
      latest.set(code, observation);
  }
  return [...latest.values()]
    .sort((left, right) => (observationDate(right) ?? '').localeCompare(observationDate(left) ?? ''))
    .slice(0, limits.results);
}

function problemLine(condition: PatientRecord['conditions'][number]): string {
  const since = condition.onsetDateTime ?? condition.recordedDate;
  return `- ${problemName(condition)}${since ? ` (since ${day(since)})` : ''} ${cite(condition)}`;
}

function problemLines(record: PatientRecord): string[] {
  const { problems } = problemList(record);
  const listed =
    problems.length === 0
      ? [`- No active problems in the retrieved record ${cite(record.patient)}`]
      : capped(problems.map(problemLine), limits.problems, record, 'active problems');
  const withheld = withheldNotice(record);
  return withheld ? [...listed, withheld] : listed;
}

/** Social and administrative findings on one line: context for the clinician, not problems to manage. */
function socialLines(record: PatientRecord): string[] {
  const { social } = problemList(record);
  if (social.length === 0) return [];
  const shown = social.slice(0, limits.social);
  const more = social.length > shown.length ? `; and ${social.length - shown.length} more` : '';
  return [
    `- ${shown.map(problemName).join('; ')}${more} ${shown.map(cite).join(' ')}${more ? ` ${cite(record.patient)}` : ''}`,
  ];
}

/** The same drug ordered at many visits is one line: the latest order. */
function latestPerMedication(medications: MedicationRequest[]): MedicationRequest[] {
  const latest = new Map<string, MedicationRequest>();
  for (const medication of medications) {
    const key = medicationName(medication).toLowerCase();
    const current = latest.get(key);
    if (!current || (medication.authoredOn ?? '') >= (current.authoredOn ?? '')) latest.set(key, medication);
  }
  return [...latest.values()];
}

function medicationLines(record: PatientRecord): string[] {
  const active = latestPerMedication(record.medications.filter(isActiveMedication));
  if (active.length === 0)
    return [`- No active medication orders in the retrieved record ${cite(record.patient)}`];
  return capped(
    active.map((medication) => {
      const dosage = medication.dosageInstruction?.[0]?.text;
      return `- ${medicationName(medication)}${dosage ? `, ${oneLine(dosage, 80)}` : ''}${medication.status === 'on-hold' ? ' (on hold)' : ''} ${cite(medication)}`;
    }),
    limits.medications,
    record,
    'active medications',
  );
}

function allergyLines(record: PatientRecord): string[] {
  const current = record.allergies.filter(
    (allergy) => allergy.clinicalStatus?.coding?.[0]?.code !== 'resolved',
  );
  if (current.length === 0)
    return [`- No allergies recorded in the retrieved record ${cite(record.patient)}`];
  return capped(
    current.map((allergy) => {
      const reaction = allergy.reaction?.[0]?.manifestation?.[0];
      const reactionText = reaction ? ` (${withoutSemanticTags(conceptText(reaction))})` : '';
      return `- ${withoutSemanticTags(conceptText(allergy.code))}${reactionText} ${cite(allergy)}`;
    }),
    limits.allergies,
    record,
    'allergies',
  );
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
    .map(
      (encounter) =>
        `- ${day(encounterDate(encounter))}: ${withoutSemanticTags(encounterText(encounter))} ${cite(encounter)}`,
    );
}

function noteLines(record: PatientRecord): string[] {
  // Newest first by date, whatever order the server listed them in.
  return [...record.notes]
    .sort((left, right) => (right.date ?? '').localeCompare(left.date ?? ''))
    .map((note) => ({ note, plan: assessmentAndPlan(note.text) }))
    .filter((entry) => entry.plan)
    .slice(0, limits.notes)
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
  const lines = [
    ...problemList(record)
      .problems.filter((condition) => newer(condition.recordedDate ?? condition.onsetDateTime))
      .map((condition) => `- New problem: ${problemName(condition)} ${cite(condition)}`),
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
  // The same drug stopped at five visits is one change (its first line is kept).
  const seen = new Set<string>();
  const distinct = lines.filter((line) => {
    const wording = line.replace(/ \[[^\]]+\]$/, '');
    if (seen.has(wording)) return false;
    seen.add(wording);
    return true;
  });
  return capped(distinct, limits.changes, record, 'changes');
}

function progressSummary(record: PatientRecord, nudges: NudgeInput[]): string[] {
  const encounter = record.encounter;
  const section = sectionOf('progress-summary');
  return [
    titleLine('progress-summary', record),
    `Encounter: ${withoutSemanticTags(encounterText(encounter))} on ${day(encounterDate(encounter))} ${cite(encounter)}`,
    ...section('Active problems', problemLines(record)),
    ...section('Social history', socialLines(record)),
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
    titleLine('previsit-briefing', record),
    `Visit: ${withoutSemanticTags(encounterText(encounter))} planned for ${day(encounterDate(encounter))} ${cite(encounter)}`,
    ...patientAnswerSections(record),
    ...section(
      'Visit urgency',
      urgent.map(
        (nudge) =>
          `- ${nudge.urgency?.level}: ${oneLine(nudge.urgency?.reason ?? '', 200)} ${nudge.evidence.map((reference) => `[${reference}]`).join(' ')}`,
      ),
    ),
    ...section('Open problems', problemLines(record)),
    ...section('Social history', socialLines(record)),
    ...section('Changes since the last visit', changesSinceLastVisit(record)),
    ...section(
      'Pending results',
      capped(
        pending.map(
          (observation) =>
            `- ${conceptText(observation.code)} ordered ${day(observationDate(observation))} ${cite(observation)}`,
        ),
        limits.pending,
        record,
        'pending results',
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
