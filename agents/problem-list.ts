import type { Condition } from 'fhir/r4.js';
import type { PatientRecord } from '../fhir/patient-record.ts';
import { defaultContentPolicy } from './clinical-content-policy.ts';
import { conceptText, encounterDate, isActiveCondition } from './record-text.ts';

/**
 * The active problem list as a clinician keeps it, from the Conditions an EHR stores: social and administrative
 * findings apart (they go to "Social history"), the same finding recorded at many visits once, a finding a later
 * one supersedes dropped (the latest BMI class; prediabetes once diabetes is diagnosed; a suspected diagnosis once
 * confirmed), and the rest in order of clinical weight: chronic and serious disorders and recent changes first,
 * then other disorders, then findings and symptoms.
 */
export interface ProblemList {
  problems: Condition[];
  social: Condition[];
}

/** A change within this many days before the visit counts as recent. */
const recentDays = 90;

const since = (condition: Condition) =>
  condition.onsetDateTime ?? condition.onsetPeriod?.start ?? condition.recordedDate;

/** SNOMED CT's semantic tags ("(disorder)", "(finding)"), which clinicians do not write. */
const semanticTags =
  /\s*\((disorder|finding|situation|person|event|procedure|substance|organism|environment|qualifier value|regime\/therapy|observable entity|morphologic abnormality)\)(?=\s|$|\))/gi;

/** A name from the record as a clinician reads it: without SNOMED CT's semantic tags. */
export function withoutSemanticTags(name: string): string {
  return name.replace(semanticTags, '').trim() || name;
}

export function problemName(condition: Condition): string {
  return withoutSemanticTags(conceptText(condition.code));
}

function identity(condition: Condition): string {
  const coding = condition.code?.coding?.find((candidate) => candidate.code);
  return coding ? `${coding.system ?? ''}|${coding.code}` : problemName(condition).toLowerCase();
}

const bmiClass = /body mass index|\bBMI\b|\bobes(e|ity)\b|overweight/i;
const diabetes = /diabetes mellitus|\bdiabetes\b|\bT[12]DM\b/i;
const prediabetes = /pre-?diabetes|impaired (fasting glucose|glucose tolerance)/i;
const diabetesCodes = new Set(['44054006', '46635009', '73211009', 'E11', 'E10']);
const prediabetesCodes = new Set(['15777000', '714628002', 'R73.03', 'R7303']);

const chronic =
  /chronic|diabetes|hypertensi|hyperlipid|hypercholesterol|heart disease|heart failure|coronary|bypass graft|atrial fibrillation|cardiomyopathy|valve|regurgitation|stenosis|kidney|renal|transplant|dialysis|COPD|obstructive (pulmonary|lung)|emphysema|asthma|epilepsy|osteoporosis|arthritis|hypothyroid|hyperthyroid|dementia|alzheimer|parkinson|multiple sclerosis|malignan|cancer|carcinoma|neoplasm|lymphoma|leuk(a)?emia|melanoma|cirrhosis|hepatitis|anemia|anaemia|sleep apnea|gout|obes(e|ity)/i;
/** Disorders that shape every decision (organ failure, transplant, cancer, vascular disease), then diabetes and its kin. */
const gravest =
  /malignan|cancer|carcinoma|neoplasm|lymphoma|leuk(a)?emia|melanoma|metasta|heart failure|isch(a)?emic heart|coronary|myocardial infarction|stroke|cerebrovascular|kidney disease|renal (failure|disease|insufficiency)|transplant|dialysis|sepsis|COPD|obstructive (pulmonary|lung)|cirrhosis|\bHIV\b/i;
const grave = /diabetes|atrial fibrillation|dementia|alzheimer|epilepsy|hepatitis/i;
const findingTag = /\((finding|situation)\)\s*$/i;

const codesOf = (condition: Condition) =>
  (condition.code?.coding ?? []).map((coding) => coding.code?.replace(/\./g, '')).filter(Boolean) as string[];

function isDiabetes(condition: Condition): boolean {
  const name = problemName(condition);
  return (
    codesOf(condition).some((code) => diabetesCodes.has(code)) ||
    (diabetes.test(name) && !prediabetes.test(name) && !/gestational/i.test(name))
  );
}

function isPrediabetes(condition: Condition): boolean {
  return (
    codesOf(condition).some((code) => prediabetesCodes.has(code)) || prediabetes.test(problemName(condition))
  );
}

/** The latest of each identity (the same finding recorded at many visits), by onset then record order. */
function latestOfEach(conditions: Condition[]): Condition[] {
  const latest = new Map<string, Condition>();
  for (const condition of conditions) {
    const key = identity(condition);
    const current = latest.get(key);
    if (!current || (since(condition) ?? '') >= (since(current) ?? '')) latest.set(key, condition);
  }
  return [...latest.values()];
}

/** Findings of which only the latest holds: a BMI class, an employment status, an education level. */
const statusGroups = [
  bmiClass,
  /employment|employed|labou?r force|retired/i,
  /education|school|educated/i,
  /\bsmok(es|er|ing)\b|tobacco/i,
];

/** Keeps the latest of each status group. */
function latestStatuses(conditions: Condition[]): Condition[] {
  const superseded = new Set<Condition>();
  for (const group of statusGroups) {
    const members = conditions.filter((condition) => group.test(problemName(condition)));
    const latest = members.reduce<Condition | undefined>(
      (newest, condition) =>
        !newest || (since(condition) ?? '') >= (since(newest) ?? '') ? condition : newest,
      undefined,
    );
    for (const member of members) if (member !== latest) superseded.add(member);
  }
  return conditions.filter((condition) => !superseded.has(condition));
}

/** Drops what a later or more definite finding supersedes. */
function withoutSuperseded(conditions: Condition[]): Condition[] {
  const diagnosedDiabetes = conditions.some(isDiabetes);
  const names = conditions.map((condition) => problemName(condition).toLowerCase());
  return latestStatuses(conditions).filter((condition) => {
    if (diagnosedDiabetes && isPrediabetes(condition)) return false;
    const suspected = /^suspected\s+(.+)$/i.exec(problemName(condition));
    if (suspected) {
      const confirmed = suspected[1].toLowerCase();
      if (names.some((name) => !name.startsWith('suspected') && name.includes(confirmed))) return false;
    }
    return true;
  });
}

/** Illnesses that run their course: still "active" years later, they were never closed, not still there. */
const selfLimiting =
  /\bacute\b|sepsis|infection|pharyngitis|bronchitis|sinusitis|otitis|fracture|laceration|sprain|concussion|injury|COVID|fever|cough/i;

function weight(condition: Condition, visitDay: string): number {
  const name = conceptText(condition.code);
  const onset = since(condition)?.slice(0, 10);
  const age = onset !== undefined && visitDay !== '' ? Date.parse(visitDay) - Date.parse(onset) : undefined;
  const recent = age !== undefined && age >= 0 && age <= recentDays * 86_400_000;
  if (selfLimiting.test(name) && !chronic.test(name) && age !== undefined && age > 365 * 86_400_000)
    return -4;
  let score = 0;
  if (chronic.test(name)) score += 4;
  if (gravest.test(name)) score += 6;
  // Prediabetes is followed for years, but it is no diabetes.
  else if (grave.test(name) && !isPrediabetes(condition)) score += 4;
  if (recent) score += 3;
  if (findingTag.test(name)) score -= 2;
  return score;
}

/**
 * The record's problem list. Which findings are social is what the site's policy decided when it was applied to
 * the record (its own code lists included); a record the policy never saw is sorted with the built-in lists.
 */
export function problemList(record: PatientRecord): ProblemList {
  const decided = record.contentPolicy ? new Set(record.contentPolicy.socialHistory) : undefined;
  const isSocial = (condition: Condition) =>
    decided ? decided.has(`Condition/${condition.id}`) : defaultContentPolicy.isSocial(condition);
  const active = record.conditions.filter(isActiveCondition);
  const social = latestStatuses(latestOfEach(active.filter(isSocial)));
  const visitDay = (record.encounter.period?.end ?? encounterDate(record.encounter) ?? '').slice(0, 10);
  const problems = withoutSuperseded(latestOfEach(active.filter((condition) => !isSocial(condition))))
    .map((condition) => ({ condition, weight: weight(condition, visitDay) }))
    .sort(
      (left, right) =>
        right.weight - left.weight ||
        (since(right.condition) ?? '').localeCompare(since(left.condition) ?? ''),
    )
    .map((entry) => entry.condition);
  return {
    problems,
    social: social.sort((left, right) => (since(right) ?? '').localeCompare(since(left) ?? '')),
  };
}
