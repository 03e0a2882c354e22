import type { Condition, FhirResource, MedicationRequest } from 'fhir/r4.js';
import { citationsIn } from '../../agents/citation-verifier.ts';
import {
  applyContentPolicy,
  type ContentPolicy,
  defaultContentPolicy,
} from '../../agents/clinical-content-policy.ts';
import { suggestedActionsHeading } from '../../agents/output-schemas.ts';
import { problemList } from '../../agents/problem-list.ts';
import { isActiveCondition, medicationName } from '../../agents/record-text.ts';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import { recordAsOfVisit } from '../../fhir/record-as-of-visit.ts';
import { normalizeText } from './labelled-set.ts';

/**
 * Lines a written draft should not hold (issue 19, item 8), each counted once per kind:
 * - afterEncounter: a line citing a resource the record as of the visit leaves out (dated after the visit's
 *   end). Judged against the whole retrieved record, not the cut one the engine got, so a cut that leaks shows.
 * - socialAsProblem: a line of a problem section citing a social or administrative finding (the policy's
 *   classification, the one the problem list uses).
 * - duplicates: a line repeating one above it in its section (same words), citing the same medication as one
 *   above it, or showing in a problem section only findings the problem list collapses (the same finding twice,
 *   a superseded BMI class, prediabetes beside diabetes).
 * - sensitiveAgainstPolicy: a line citing a resource the content policy withholds, or naming a withheld category.
 * The target for each is 0. Findings named in free text the policy cannot see (a note's own wording) are not
 * caught here either: names are matched as the policy matches them.
 */
export const unwantedKinds = [
  'afterEncounter',
  'socialAsProblem',
  'duplicates',
  'sensitiveAgainstPolicy',
] as const;
export type UnwantedKind = (typeof unwantedKinds)[number];
export type UnwantedLines = Record<UnwantedKind, number>;

const referenceOf = (resource: FhirResource) => `${resource.resourceType}/${resource.id}`;
const citationText = /\[[A-Z][A-Za-z]+\/[^\]]*\]/g;
const markdownHeading = /^#{1,6}\s/;

interface DraftLine {
  section: string;
  text: string;
  citations: string[];
}

/** The draft's lines under the section heading each stands in (markdown headings and the template's own). */
function linesBySection(text: string, headings: readonly string[]): DraftLine[] {
  const templateHeadings = new Set(headings.map((heading) => heading.trim()));
  const lines: DraftLine[] = [];
  let section = '';
  for (const line of text.split('\n')) {
    const trimmed = line.trim();
    if (trimmed === '') continue;
    if (markdownHeading.test(trimmed) || templateHeadings.has(trimmed)) {
      section = trimmed.replace(/^#+\s*/, '').replace(/:$/, '');
      continue;
    }
    lines.push({ section, text: trimmed, citations: citationsIn(trimmed) });
  }
  return lines;
}

const isProblemSection = (section: string) => /problem/i.test(section);
const isSuggestedActions = (section: string) => section === suggestedActionsHeading;
const isMedicationSection = (section: string) => /medication/i.test(section);

/** The references a record holds. */
function referencesOf(record: PatientRecord): Set<string> {
  return new Set(recordResources(record).map(referenceOf));
}

export function unwantedLines(input: {
  /** The record as retrieved, uncut and unfiltered. */
  retrieved: PatientRecord;
  /** The text that would be written (verified). */
  text: string;
  /** The draft kind's template heading lines (DraftResult.headings). */
  headings: readonly string[];
  /** The instant the draft's record was cut at for a visit still to come (the pipeline's now). */
  now: Date;
  policy?: ContentPolicy;
}): UnwantedLines {
  const policy = input.policy ?? defaultContentPolicy;
  const asOfVisit = recordAsOfVisit(input.retrieved, input.now);
  const kept = referencesOf(asOfVisit);
  const afterVisit = new Set([...referencesOf(input.retrieved)].filter((reference) => !kept.has(reference)));
  const allowed = referencesOf(applyContentPolicy(asOfVisit, policy));
  const withheld = new Set([...kept].filter((reference) => !allowed.has(reference)));
  // A cited Condition as it stood at the visit, else as retrieved (one cited after the visit).
  const conditions = new Map<string, Condition>();
  for (const condition of [...input.retrieved.conditions, ...asOfVisit.conditions])
    conditions.set(referenceOf(condition), condition);
  const medications = new Map<string, MedicationRequest>(
    input.retrieved.medications.map((medication) => [referenceOf(medication), medication]),
  );

  const counts: UnwantedLines = {
    afterEncounter: 0,
    socialAsProblem: 0,
    duplicates: 0,
    sensitiveAgainstPolicy: 0,
  };
  const lines = linesBySection(input.text, input.headings);
  const duplicate = new Set<DraftLine>();
  const wordingSeen = new Set<string>();
  const medicationSeen = new Set<string>();
  for (const line of lines) {
    const wording = normalizeText(line.text.replace(citationText, ' '))
      .replace(/^[-*\s]+/, '')
      .trim();
    if (line.citations.some((citation) => afterVisit.has(citation))) counts.afterEncounter += 1;
    // A suggested action rests on a rule and names a topic (depression screening), not the patient's finding:
    // only what it cites is judged there.
    if (
      line.citations.some((citation) => withheld.has(citation)) ||
      (!isSuggestedActions(line.section) && policy.withheldCategory([{ text: wording }]) !== undefined)
    )
      counts.sensitiveAgainstPolicy += 1;
    const citedConditions = line.citations.flatMap((citation) => conditions.get(citation) ?? []);
    if (isProblemSection(line.section) && citedConditions.some((condition) => policy.isSocial(condition)))
      counts.socialAsProblem += 1;
    const key = `${line.section}\n${wording}`;
    if (wording !== '' && wordingSeen.has(key)) duplicate.add(line);
    wordingSeen.add(key);
    if (isMedicationSection(line.section)) {
      const names = line.citations.flatMap((citation) => {
        const medication = medications.get(citation);
        return medication ? [normalizeText(medicationName(medication))] : [];
      });
      if (names.length > 0 && names.every((name) => medicationSeen.has(name))) duplicate.add(line);
      for (const name of names) medicationSeen.add(name);
    }
  }

  // The problem list collapses repeats and superseded findings: a problem line none of whose findings survive
  // the collapse of everything the draft lists as problems says again what another line says.
  const problemLines = lines
    .filter((line) => isProblemSection(line.section))
    .map((line) => ({
      line,
      conditions: line.citations.flatMap((citation) => {
        const condition = conditions.get(citation);
        return condition && isActiveCondition(condition) ? [condition] : [];
      }),
    }))
    .filter((entry) => entry.conditions.length > 0);
  const listed = problemLines.flatMap((entry) => entry.conditions);
  const collapsed = problemList({
    ...asOfVisit,
    conditions: listed,
    contentPolicy: {
      withheldFindings: 0,
      withheldEntries: 0,
      socialHistory: listed.filter((condition) => policy.isSocial(condition)).map(referenceOf),
    },
  });
  const survivors = new Set([...collapsed.problems, ...collapsed.social]);
  for (const entry of problemLines)
    if (!entry.conditions.some((condition) => survivors.has(condition))) duplicate.add(entry.line);
  counts.duplicates = duplicate.size;
  return counts;
}

/** How many distinct notes a draft cites: the notes it summarises. */
export function notesCited(text: string): number {
  return new Set(citationsIn(text).filter((citation) => citation.startsWith('DocumentReference/'))).size;
}
