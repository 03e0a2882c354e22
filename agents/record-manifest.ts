import type { PatientRecord } from '../fhir/patient-record.ts';
import type { DraftKind } from './draft-engine.ts';
import { problemList } from './problem-list.ts';
import {
  allergyLine,
  conditionLine,
  encounterLine,
  immunizationLine,
  isActiveCondition,
  isActiveMedication,
  medicationLine,
  newestFirst,
  noteLine,
  observationDate,
  observationLine,
  procedureLine,
  referenceOf,
} from './record-lines.ts';

/**
 * The manifest: code's compact map of the patient's record (types, codes, dates, the note list), the
 * first thing the model sees. Every active problem (repeats and superseded findings collapsed, social
 * findings apart: agents/problem-list.ts), active medication and allergy is always listed; the long tails (observations, notes, past encounters) are cut to fit the token budget and
 * stay reachable through the tools.
 */
export interface Manifest {
  text: string;
  /** Every `Type/id` the manifest shows: citable in this run. */
  references: Set<string>;
  /** Lines for the always-listed problems, medications and allergies, reused by the write-up. */
  essentials: string[];
}

interface Section {
  heading: string;
  lines: string[];
  /** Total before cutting, to tell the model what else exists. */
  total: number;
  /** Essential sections are never cut. */
  essential: boolean;
  more?: string;
}

/** Latest observation per code, newest first: trends are for get_observations. */
function latestPerCode(record: PatientRecord) {
  const latest = new Map<string, (typeof record.observations)[number]>();
  for (const observation of newestFirst(record.observations, observationDate)) {
    const code = observation.code?.coding?.[0]?.code ?? observation.code?.text ?? observation.id ?? '';
    if (!latest.has(code)) latest.set(code, observation);
  }
  return [...latest.values()];
}

export function buildManifest(
  record: PatientRecord,
  kind: DraftKind,
  options: { maxTokens: number; countTokens: (text: string) => number },
): Manifest {
  const activeConditions = record.conditions.filter(isActiveCondition);
  // The problem list as the extractive draft shows it: repeats and superseded findings collapsed, ordered by
  // clinical weight, social findings in a section of their own (the rest stay reachable through the tools).
  const { problems, social } = problemList(record);
  const activeMedications = record.medications.filter(isActiveMedication);
  const observations = latestPerCode(record);
  const pending = newestFirst(
    record.observations.filter(
      (observation) => observation.status === 'registered' || observation.status === 'preliminary',
    ),
    observationDate,
  );
  const notes = newestFirst(record.notes, (note) => note.date);
  const encounters = newestFirst(
    record.encounters.filter((encounter) => encounter.id !== record.encounter.id),
    (encounter) => encounter.period?.start,
  );
  const procedures = newestFirst(
    record.procedures,
    (procedure) => procedure.performedDateTime ?? procedure.performedPeriod?.start,
  );
  const immunizations = newestFirst(record.immunizations, (immunization) => immunization.occurrenceDateTime);
  const sections: Section[] = [
    {
      heading: kind === 'progress-summary' ? 'Encounter to summarise' : 'Upcoming or current visit',
      lines: [encounterLine(record.encounter)],
      total: 1,
      essential: true,
    },
    {
      heading: 'Active problems',
      lines: problems.map(conditionLine),
      total: problems.length,
      essential: true,
    },
    {
      heading: 'Social history',
      lines: social.map(conditionLine),
      total: social.length,
      essential: false,
      more: 'search_resources with type Condition',
    },
    {
      heading: 'Active medications',
      lines: activeMedications.map(medicationLine),
      total: activeMedications.length,
      essential: true,
    },
    {
      heading: 'Allergies',
      lines: record.allergies.map(allergyLine),
      total: record.allergies.length,
      essential: true,
    },
    {
      // What the clinician should chase before walking in: results not final yet.
      heading: 'Pending results',
      lines: pending.map(observationLine),
      total: pending.length,
      essential: false,
      more: 'get_observations',
    },
    {
      heading: 'Notes (newest first)',
      lines: notes.map((note) => noteLine(note, options.countTokens(note.text))),
      total: notes.length,
      essential: false,
      more: 'search_resources with type DocumentReference',
    },
    {
      heading: 'Latest result per test',
      lines: observations.map(observationLine),
      total: observations.length,
      essential: false,
      more: 'get_observations',
    },
    {
      heading: 'Earlier encounters (newest first)',
      lines: encounters.map(encounterLine),
      total: encounters.length,
      essential: false,
      more: 'search_resources with type Encounter',
    },
    {
      heading: 'Resolved problems',
      lines: record.conditions.filter((condition) => !isActiveCondition(condition)).map(conditionLine),
      total: record.conditions.length - activeConditions.length,
      essential: false,
      more: 'search_resources with type Condition',
    },
    {
      heading: 'Procedures (newest first)',
      lines: procedures.map(procedureLine),
      total: procedures.length,
      essential: false,
      more: 'search_resources with type Procedure',
    },
    {
      heading: 'Immunizations (newest first)',
      lines: immunizations.map(immunizationLine),
      total: immunizations.length,
      essential: false,
      more: 'search_resources with type Immunization',
    },
  ];
  const essentialTokens = sections
    .filter((section) => section.essential)
    .reduce((sum, section) => sum + options.countTokens(section.lines.join('\n')) + 8, 0);
  let remaining = Math.max(0, options.maxTokens - essentialTokens);
  // Optional sections share what is left in turn, each taking at most an even share of it.
  const optional = sections.filter((section) => !section.essential);
  for (const [index, section] of optional.entries()) {
    const share = Math.floor(remaining / (optional.length - index));
    const kept: string[] = [];
    let used = 0;
    for (const line of section.lines) {
      const cost = options.countTokens(line) + 1;
      if (used + cost > share) break;
      kept.push(line);
      used += cost;
    }
    section.lines = kept;
    remaining -= used;
  }
  const references = new Set<string>([referenceOf(record.encounter)]);
  const parts: string[] = [];
  for (const section of sections) {
    if (section.total === 0) continue;
    parts.push(`${section.heading}:`);
    parts.push(...section.lines);
    const omitted = section.total - section.lines.length;
    if (omitted > 0) parts.push(`(${omitted} more${section.more ? `: use ${section.more}` : ''})`);
    for (const line of section.lines) {
      const match = /^\[([^\]]+)\]/.exec(line);
      if (match) references.add(match[1]);
    }
  }
  const essentials = sections
    .filter((section) => section.essential)
    .slice(1)
    .flatMap((section) => section.lines);
  return { text: parts.join('\n'), references, essentials };
}
