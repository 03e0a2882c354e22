import type {
  CodeableConcept,
  Coding,
  Condition,
  Encounter,
  FhirResource,
  MedicationRequest,
  Reference,
} from 'fhir/r4.js';
import type { PatientRecord } from '../fhir/patient-record.ts';
import {
  type ClinicalContentConfig,
  clinicalContentConfigSchema,
  type SensitiveCategory,
  sensitiveCategories,
} from '../src/config/clinical-content-config.ts';
import { isActiveCondition } from './record-text.ts';

/**
 * The site's clinical content policy applied to a patient record before rules, engines and the citation verifier
 * see it: sensitive findings (and what names them: results, procedures, orders, visits for them) are taken out
 * unless the site allows their category, so no engine can show them to a model or write or cite them; social and
 * administrative findings stay for a "Social history" section or are taken out too, as the site chose. The record
 * keeps only counts of what was taken out, so the draft can say that something was.
 *
 * Notes are redacted by name only: sentences and list items naming a withheld category are taken out of the text
 * engines get (the note in the EHR is unchanged); a note that words it otherwise ("her partner hit her") still
 * says it. Free text needs more than code lists and names to be filtered reliably.
 */

const snomed = 'http://snomed.info/sct';
const loinc = 'http://loinc.org';
const icd10Systems = ['http://hl7.org/fhir/sid/icd-10-cm', 'http://hl7.org/fhir/sid/icd-10'];

interface CodePattern {
  /** Absent: any system. */
  systems?: string[];
  code: string;
  prefix: boolean;
}

/** Short system names for the built-in lists: `sct|`, `icd10|` (ICD-10-CM and WHO ICD-10), `loinc|`. */
const systemAliases: Record<string, string[]> = { sct: [snomed], icd10: icd10Systems, loinc: [loinc] };

/** ICD-10 codes are written with and without their dot (F10.20, F1020): compared without it. */
const normalizedCode = (code: string) => code.replace(/\./g, '').toUpperCase();

function parsePattern(entry: string): CodePattern {
  const bar = entry.lastIndexOf('|');
  const system = bar >= 0 ? entry.slice(0, bar) : undefined;
  const raw = bar >= 0 ? entry.slice(bar + 1) : entry;
  const prefix = raw.endsWith('*');
  return {
    systems: system === undefined ? undefined : (systemAliases[system] ?? [system]),
    code: normalizedCode(prefix ? raw.slice(0, -1) : raw),
    prefix,
  };
}

function codingMatches(coding: Coding, pattern: CodePattern): boolean {
  if (!coding.code) return false;
  if (pattern.systems && !(coding.system && pattern.systems.includes(coding.system))) return false;
  const code = normalizedCode(coding.code);
  return pattern.prefix ? code.startsWith(pattern.code) : code === pattern.code;
}

/**
 * Built-in code lists. SNOMED CT codes are those EHRs (and Synthea, from its PRAPARE and clinical modules) record;
 * ICD-10 ranges are the chapters and blocks of each category; LOINC codes are the screening instruments and tests
 * whose mere presence says which category a patient was screened or tested for.
 */
const builtInSensitiveCodes: Record<SensitiveCategory, string[]> = {
  'intimate-partner-violence': [
    'sct|706893006', // Victim of intimate partner abuse
    // PRAPARE's "feel physically and emotionally safe where you live?": the home-safety item of IPV screening.
    'sct|424393004', // Reports of violence in the environment
    'sct|95930005', // Victim of domestic violence
    'icd10|T74.1*', // confirmed physical abuse
    'icd10|T76.1*', // suspected physical abuse
    'icd10|Y07.0*', // perpetrator: spouse or partner
    'icd10|Z69.1*', // counselling for spousal or partner abuse
    'loinc|76499-3', // HARK panel
    'loinc|76504-0', // HARK total score
  ],
  'criminal-justice': [
    'sct|266948004', // Has a criminal record
    'icd10|Z65.1*', // imprisonment and other incarceration
    'icd10|Z65.2*', // problems related to release from prison
    'icd10|Z65.3*', // problems related to other legal circumstances
  ],
  'substance-use': [
    'sct|10939881000119105', // Unhealthy alcohol drinking behavior
    'sct|361055000', // Misuses drugs
    'sct|5602001', // Opioid abuse
    'sct|6525002', // Dependent drug abuse
    'sct|55680006', // Drug overdose
    'sct|7200002', // Alcoholism
    'sct|15167005', // Alcohol abuse
    'icd10|F1*', // F10-F19 mental and behavioural disorders due to psychoactive substance use
    'icd10|Z71.4*', // alcohol abuse counselling
    'icd10|Z71.5*', // drug abuse counselling
    'loinc|72109-2', // AUDIT-C panel
    'loinc|75626-2', // AUDIT-C total score
    'loinc|82666-9', // DAST-10 panel
    'loinc|82667-7', // DAST-10 total score
  ],
  hiv: [
    'sct|86406008', // Human immunodeficiency virus infection
    'sct|62479008', // AIDS
    'sct|165816005', // HIV positive
    'sct|91947003', // Asymptomatic HIV infection
    'icd10|B20*',
    'icd10|Z21*',
    'icd10|R75*',
    'icd10|O98.7*',
    'loinc|56888-1', // HIV 1+2 Ab+HIV1 p24 Ag
    'loinc|75622-1', // HIV 1 and 2 tests - meaningful use set
    'loinc|20447-9', // HIV 1 RNA viral load
  ],
  'reproductive-health': [
    'sct|72892002', // Normal pregnancy
    'sct|19169002', // Miscarriage in first trimester
    'sct|156073000', // Complete miscarriage
    'sct|47200007', // High risk pregnancy
    'sct|79586000', // Tubal pregnancy
    'sct|398254007', // Pre-eclampsia
    'sct|198992004', // Eclampsia in pregnancy
    'sct|11687002', // Gestational diabetes mellitus
    'sct|8619003', // Infertility
    'icd10|O*', // pregnancy, childbirth and the puerperium
    'icd10|Z3*', // Z30-Z39 contraception, pregnancy, procreative management
    'icd10|N97*', // female infertility
    'loinc|82810-3', // Pregnancy status
    'loinc|2106-3', // Choriogonadotropin (pregnancy test) in urine
  ],
  'mental-health': [
    'sct|36923009', // Major depression, single episode
    'sct|370143000', // Major depressive disorder
    'sct|35489007', // Depressive disorder
    'sct|47505003', // Posttraumatic stress disorder
    'sct|192127007', // Child attention deficit disorder
    'sct|197480006', // Anxiety disorder
    'sct|48694002', // Anxiety
    'sct|58214004', // Schizophrenia
    'sct|13746004', // Bipolar disorder
    'sct|6471006', // Suicidal thoughts
    'sct|86849004', // Suicidal deliberate poisoning
    // F20-F69 and F90-F99; F0x (dementias) are managed as medical problems, F1x is substance use.
    ...['F2*', 'F3*', 'F4*', 'F5*', 'F6*', 'F9*'].map((range) => `icd10|${range}`),
    'icd10|R45.851', // suicidal ideations
    'icd10|Z91.5*', // personal history of self-harm
    'loinc|44249-1', // PHQ-9 panel
    'loinc|44261-6', // PHQ-9 total score
    'loinc|55757-9', // PHQ-2 panel
    'loinc|55758-7', // PHQ-2 total score
    'loinc|69737-5', // GAD-7 panel
    'loinc|70274-6', // GAD-7 total score
  ],
};

/** Names that give a category away whatever the code system (local codes, text-only entries). */
const sensitiveNames: Record<SensitiveCategory, RegExp[]> = {
  'intimate-partner-violence': [
    /intimate partner|domestic (violence|abuse)|partner (abuse|violence)|spouse abuse|battered|violence in the environment/i,
  ],
  'criminal-justice': [/criminal|incarcerat|imprison|\bprison|\bjail\b|\bparole\b|\bprobation\b/i],
  'substance-use': [
    /alcohol|opioid|opiate|\bdrugs?\b.*\b(abuse|misuse|dependen|use disorder)|misuses drugs|substance (use|abuse|misuse|dependen)|overdose|heroin|cocaine|cannabis|marijuana|methamphetamine|amphetamine (abuse|dependen)/i,
  ],
  hiv: [/\bHIV\b|human immunodeficiency virus|acquired immunodeficiency/i, /\bAIDS\b/],
  'reproductive-health': [
    /pregnan|miscarriage|abortion|contracept|infertil|fertility|prenatal|antenatal|postpartum|post-partum|gestation|eclampsia|ectopic|obstetric|\bfetal\b|\bfetus\b|intrauterine device|sterili[sz]ation/i,
  ],
  'mental-health': [
    /depress(ive|ion)|anxiety|panic (disorder|attack)|bipolar|schizo|psychos[ie]s|psychotic|suicid|self-harm|post-?traumatic|\bPTSD\b|eating disorder|anorexia nervosa|bulimia|attention deficit|\bADHD\b|mental (health|disorder|illness)|personality disorder/i,
  ],
};

const builtInSocialCodes = [
  'sct|160903007', // Full-time employment
  'sct|160904001', // Part-time employment
  'sct|73438004', // Unemployed
  'sct|741062008', // Not in labor force
  'sct|224295006', // Only received primary school education
  'sct|224299000', // Received higher education
  'sct|5251000175109', // Received certificate of high school equivalency
  'sct|473461003', // Educated to high school level
  'sct|105531004', // Housing unsatisfactory
  'sct|32911000', // Homeless
  'sct|266934004', // Transport problem
  'sct|713458007', // Lack of access to transportation
  'sct|422650009', // Social isolation
  'sct|423315002', // Limited social contact
  'sct|73595000', // Stress (PRAPARE's stress item; a disorder would be coded as one)
  'sct|160968000', // Risk activity involvement
  'sct|446654005', // Refugee
  'sct|314529007', // Medication review due (administrative)
  'sct|449868002', // Smokes tobacco daily
  'sct|65568007', // Cigarette smoker
  'sct|8517006', // Ex-smoker
  'sct|266919005', // Never smoked tobacco
  // Z55-Z65: persons with potential health hazards related to socioeconomic and psychosocial circumstances.
  ...['Z55*', 'Z56*', 'Z57*', 'Z58*', 'Z59*', 'Z60*', 'Z62*', 'Z63*', 'Z64*', 'Z65*'].map(
    (block) => `icd10|${block}`,
  ),
  'icd10|Z72.0*', // tobacco use
];

const socialNames =
  /employment|employed|labou?r force|education|\bschool\b|housing|homeless|transport|social (isolation|contact)|refugee|\bincome\b|financial|food insecurity|insurance|risk activity|medication review due|\bsmok(es|er|ing)\b|tobacco/i;

/** Condition categories that say a finding is a social or health concern, not a diagnosis. */
const socialCategoryCodes = new Set(['health-concern', 'sdoh', 'social-history']);

export interface ContentPolicy {
  socialHistory: 'section' | 'omit';
  /** The sensitive category a concept belongs to and the site does not allow, if any. */
  withheldCategory(concepts: (CodeableConcept | undefined)[]): SensitiveCategory | undefined;
  /** A social or administrative finding (employment, education, housing, stress, smoking), not a diagnosis. */
  isSocial(condition: Condition): boolean;
  /** Free text without the list items and sentences that name a withheld category (by name: text has no codes). */
  redactText(text: string): string;
}

/**
 * The names of a concept as drafts and models get them: a name is its first line (record-text.ts labelText drops
 * the rest), so what follows a line break is neither shown nor matched.
 */
function conceptNames(concept: CodeableConcept): string[] {
  return [concept.text, ...(concept.coding ?? []).map((coding) => coding.display)]
    .map((name) => name?.split(/[\n\r\v\f\u0085\u2028\u2029]/).find((line) => line.trim() !== ''))
    .filter((name): name is string => typeof name === 'string' && name !== '');
}

function anyCodingMatches(concepts: (CodeableConcept | undefined)[], patterns: CodePattern[]): boolean {
  return concepts.some((concept) =>
    (concept?.coding ?? []).some((coding) => patterns.some((pattern) => codingMatches(coding, pattern))),
  );
}

/**
 * Notes list findings in sentences ("Patient has a history of stress (finding), victim of intimate partner abuse
 * (finding), ..."): a sentence naming a withheld category loses the comma-separated items that name it, or goes
 * whole when nothing else is left. Lines naming nothing withheld are kept exactly as written.
 */
function redactedText(text: string, namesWithheld: (text: string) => boolean): string {
  return text
    .split('\n')
    .map((line) => {
      if (!namesWithheld(line)) return line;
      return line
        .split(/(?<=[.!?;])\s+/)
        .map((sentence) => {
          if (!namesWithheld(sentence)) return sentence;
          const end = /[.!?;]$/.exec(sentence)?.[0] ?? '';
          const items = (end ? sentence.slice(0, -1) : sentence).split(/,\s+/);
          const kept = items.filter((item) => !namesWithheld(item));
          return kept.length > 0 && kept.length < items.length ? `${kept.join(', ')}${end}` : '';
        })
        .filter((sentence) => sentence !== '')
        .join(' ');
    })
    .join('\n');
}

export function contentPolicyOf(config: ClinicalContentConfig): ContentPolicy {
  const allowed = new Set(config.sensitive.allow);
  const withheld = sensitiveCategories
    .filter((category) => !allowed.has(category))
    .map((category) => ({
      category,
      patterns: [...builtInSensitiveCodes[category], ...(config.sensitive.codes[category] ?? [])].map(
        parsePattern,
      ),
      names: config.sensitive.matchNames ? sensitiveNames[category] : [],
    }));
  const social = [...builtInSocialCodes, ...config.socialCodes].map(parsePattern);
  const withheldNames = withheld.flatMap(({ category }) => sensitiveNames[category]);
  const namesWithheld = (text: string) => withheldNames.some((pattern) => pattern.test(text));
  return {
    redactText: (text) => redactedText(text, namesWithheld),
    socialHistory: config.socialHistory,
    withheldCategory(concepts) {
      const names = concepts.flatMap((concept) => (concept ? conceptNames(concept) : []));
      return withheld.find(
        ({ patterns, names: namePatterns }) =>
          anyCodingMatches(concepts, patterns) ||
          names.some((name) => namePatterns.some((pattern) => pattern.test(name))),
      )?.category;
    },
    isSocial(condition) {
      if (
        (condition.category ?? []).some((category) =>
          (category.coding ?? []).some((coding) => coding.code && socialCategoryCodes.has(coding.code)),
        )
      )
        return true;
      if (anyCodingMatches([condition.code], social)) return true;
      return condition.code ? conceptNames(condition.code).some((name) => socialNames.test(name)) : false;
    },
  };
}

/** The policy when a site sets nothing: social history shown, every sensitive category left out. */
export const defaultContentPolicy: ContentPolicy = contentPolicyOf(clinicalContentConfigSchema.parse({}));

const referenceTo = (resource: FhirResource) => `${resource.resourceType}/${resource.id}`;

/**
 * An instruction without its "for <withheld>" clause, so the dose stays ("0.5 mg three times daily"); when what is
 * left states no dose, or still names a withheld category, it is redacted whole like a note's sentence.
 */
function redactedInstruction(text: string, policy: ContentPolicy): string {
  const names = (phrase: string) => policy.redactText(phrase) !== phrase;
  const withoutReason = text.replace(/\s+(?:as needed\s+)?for\s+[^,;.]+/gi, (clause) =>
    names(clause) ? '' : clause,
  );
  if (withoutReason !== text && !/\d/.test(withoutReason)) return policy.redactText(text).trim();
  return policy.redactText(withoutReason).trim();
}

/**
 * A kept medication's instructions can still name what the policy withholds ("as needed for anxiety"): their free
 * text is redacted like a note's, and an as-needed reason in a withheld category is dropped. The medication stays.
 */
function withoutWithheldInstructions(
  medication: MedicationRequest,
  policy: ContentPolicy,
): MedicationRequest {
  if (!medication.dosageInstruction?.length) return medication;
  let changed = false;
  const dosageInstruction = medication.dosageInstruction.map((dosage) => {
    const { text, patientInstruction, asNeededCodeableConcept, ...rest } = dosage;
    const redacted = text === undefined ? undefined : redactedInstruction(text, policy);
    const instruction =
      patientInstruction === undefined ? undefined : redactedInstruction(patientInstruction, policy);
    const reasonWithheld =
      asNeededCodeableConcept !== undefined &&
      policy.withheldCategory([asNeededCodeableConcept]) !== undefined;
    if (redacted === text && instruction === patientInstruction && !reasonWithheld) return dosage;
    changed = true;
    return {
      ...rest,
      ...(redacted ? { text: redacted } : {}),
      ...(instruction ? { patientInstruction: instruction } : {}),
      ...(asNeededCodeableConcept && !reasonWithheld ? { asNeededCodeableConcept } : {}),
      ...(reasonWithheld ? { asNeededBoolean: true } : {}),
    };
  });
  return changed ? { ...medication, dosageInstruction } : medication;
}

function findingIdentity(condition: Condition): string {
  const coding = condition.code?.coding?.find((candidate) => candidate.code);
  return coding ? `${coding.system ?? ''}|${coding.code}` : (condition.code?.text ?? referenceTo(condition));
}

/** `Condition/<id>` from a reference, however the server wrote it (relative, absolute, versioned). */
function referencedCondition(reference: Reference | undefined): string | undefined {
  const match = reference?.reference?.match(/(?:^|\/)(Condition\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/.*)?$/);
  return match?.[1];
}

/** The concepts of a resource that say what it is about (its code, value, reasons, type). */
function conceptsOf(resource: FhirResource): (CodeableConcept | undefined)[] {
  const about = resource as {
    code?: CodeableConcept;
    valueCodeableConcept?: CodeableConcept;
    reasonCode?: CodeableConcept[];
    type?: CodeableConcept[];
    component?: { code?: CodeableConcept; valueCodeableConcept?: CodeableConcept }[];
    medicationCodeableConcept?: CodeableConcept;
  };
  return [
    about.code,
    about.valueCodeableConcept,
    about.medicationCodeableConcept,
    ...(about.reasonCode ?? []),
    ...(Array.isArray(about.type) ? about.type : []),
    ...(about.component ?? []).flatMap((component) => [component.code, component.valueCodeableConcept]),
  ];
}

/** The conditions a resource names as its reason or diagnosis. */
function conditionsNamedBy(resource: FhirResource): string[] {
  const about = resource as {
    reasonReference?: Reference[];
    diagnosis?: { condition?: Reference }[];
  };
  return [
    ...(about.reasonReference ?? []).map(referencedCondition),
    ...(about.diagnosis ?? []).map((diagnosis) => referencedCondition(diagnosis.condition)),
  ].filter((reference): reference is string => reference !== undefined);
}

/**
 * Screening that is offered to every patient (depression, anxiety, substance use, domestic abuse questionnaires at a
 * yearly visit) says nothing about the patient; its result, an Observation, is what the policy leaves out.
 */
const routineScreening = /^(screening for|assessment (of|using)|depression screening)\b/i;

function isRoutineScreening(resource: FhirResource): boolean {
  if (resource.resourceType !== 'Procedure') return false;
  const name = resource.code ? conceptNames(resource.code)[0] : undefined;
  return name !== undefined && routineScreening.test(name) && (resource.reasonCode ?? []).length === 0;
}

/**
 * The visit being drafted cannot be left out: it keeps its class and period, and loses the type, reasons and
 * diagnoses that give a withheld category away.
 */
function visitWithoutWithheld(
  encounter: Encounter,
  policy: ContentPolicy,
  withheldConditions: ReadonlySet<string>,
): Encounter {
  const keep = (concept: CodeableConcept) => policy.withheldCategory([concept]) === undefined;
  const keepReference = (reference: Reference | undefined) => {
    const condition = referencedCondition(reference);
    return condition === undefined || !withheldConditions.has(condition);
  };
  const copy: Encounter = { ...encounter };
  if (encounter.type) copy.type = encounter.type.filter(keep);
  if (encounter.reasonCode) copy.reasonCode = encounter.reasonCode.filter(keep);
  if (encounter.reasonReference) copy.reasonReference = encounter.reasonReference.filter(keepReference);
  if (encounter.diagnosis)
    copy.diagnosis = encounter.diagnosis.filter((diagnosis) => keepReference(diagnosis.condition));
  for (const key of ['type', 'reasonCode', 'reasonReference', 'diagnosis'] as const)
    if (Array.isArray(copy[key]) && copy[key].length === 0) delete copy[key];
  return copy;
}

/**
 * The record as the policy lets drafts see it. Nothing is changed in place: the retrieved record stays as read.
 * `contentPolicy` counts the active findings left out (what the problem list would have shown) and the other
 * entries, and names the Conditions kept for the social history.
 */
export function applyContentPolicy(record: PatientRecord, policy: ContentPolicy): PatientRecord {
  // The same finding recorded at many visits is one finding left out; its repeats count as entries.
  const withheldFindings = new Set<string>();
  let entries = 0;
  const withheldConditions = new Set<string>();
  const conditions = record.conditions.filter((condition) => {
    const leftOut =
      policy.withheldCategory([condition.code]) !== undefined ||
      (policy.socialHistory === 'omit' && policy.isSocial(condition));
    if (!leftOut) return true;
    withheldConditions.add(referenceTo(condition));
    const finding = findingIdentity(condition);
    if (isActiveCondition(condition) && !withheldFindings.has(finding)) withheldFindings.add(finding);
    else entries += 1;
    return false;
  });
  const keep = <Resource extends FhirResource>(resource: Resource): boolean => {
    const leftOut =
      (!isRoutineScreening(resource) && policy.withheldCategory(conceptsOf(resource)) !== undefined) ||
      conditionsNamedBy(resource).some((reference) => withheldConditions.has(reference));
    if (leftOut) entries += 1;
    return !leftOut;
  };
  const visitId = record.encounter.id;
  const encounter = visitWithoutWithheld(record.encounter, policy, withheldConditions);
  const encounters = record.encounters
    .filter((candidate) => candidate.id === visitId || keep(candidate))
    .map((candidate) =>
      candidate.id === visitId ? visitWithoutWithheld(candidate, policy, withheldConditions) : candidate,
    );
  const filtered: PatientRecord = {
    ...record,
    // What a note says in free text is matched by name only: a best effort, not a guarantee.
    notes: record.notes.map((note) => {
      const text = policy.redactText(note.text);
      return text === note.text ? note : { ...note, text };
    }),
    encounter,
    conditions,
    observations: record.observations.filter(keep),
    medications: record.medications
      .filter(keep)
      .map((medication) => withoutWithheldInstructions(medication, policy)),
    procedures: record.procedures.filter(keep),
    immunizations: record.immunizations.filter(keep),
    encounters,
    ...(record.additional ? { additional: record.additional.filter(keep) } : {}),
  };
  filtered.contentPolicy = {
    withheldFindings: (record.contentPolicy?.withheldFindings ?? 0) + withheldFindings.size,
    withheldEntries: (record.contentPolicy?.withheldEntries ?? 0) + entries,
    socialHistory: conditions.filter((condition) => policy.isSocial(condition)).map(referenceTo),
  };
  return filtered;
}

/**
 * The draft's line saying that the site's policy left findings out (counts only), citing the patient; undefined
 * when nothing was. Both engines write it: the reviewer must know the list is not the whole record.
 */
export function withheldNotice(record: PatientRecord): string | undefined {
  const findings = record.contentPolicy?.withheldFindings ?? 0;
  const entries = record.contentPolicy?.withheldEntries ?? 0;
  if (findings === 0 && entries === 0) return undefined;
  const counted = (count: number, one: string, many: string) => `${count} ${count === 1 ? one : many}`;
  const what =
    findings > 0 && entries > 0
      ? `${counted(findings, 'finding', 'findings')} and ${counted(entries, 'related entry', 'related entries')}`
      : findings > 0
        ? counted(findings, 'finding', 'findings')
        : counted(entries, 'entry', 'entries');
  return `- ${what} left out by site policy [Patient/${record.patient.id}]`;
}
