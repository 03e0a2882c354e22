import type {
  AllergyIntolerance,
  Binary,
  Condition,
  DocumentReference,
  Encounter,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Patient,
  Procedure,
  Reference,
} from 'fhir/r4.js';
import {
  allergyCodes,
  concept,
  conditionCodes,
  encounterTypes,
  medicationCodes,
  noKnownAllergy,
  observationCodes,
  procedureCodes,
  progressNoteType,
  resolvedConditionCodes,
  systems,
  vaccineCodes,
} from './clinical-codes.ts';
import {
  type ClinicalPlan,
  patientIdFor,
  planFor,
  profileFor,
  type SandboxPatientProfile,
} from './patient-profiles.ts';
import {
  type LatestResult,
  type NoteContext,
  plantedStatements,
  progressNoteText,
} from './progress-notes.ts';
import { type SeededRandom, seededRandom } from './seeded-random.ts';

/**
 * The project's own synthetic patients: deterministic for a seed (no Math.random), ids prefixed per
 * patient (`sbx-0003`, `sbx-0003-enc-0012`), every reference internal to the patient's own resources.
 * Names are obviously fake. Dates are relative to `now` so that guideline windows stay meaningful.
 */
export interface GeneratePatientsOptions {
  count: number;
  seed: number;
  /** The reference time; defaults to the start of the current UTC day (stable within a day). */
  now?: Date;
  /** Overrides each plan's notes per finished encounter (0 for bulk populations without notes). */
  notesPerEncounter?: number;
  /** Caps the notes of each patient, keeping the most recent. */
  maxNotesPerPatient?: number;
  /** Share of notes whose text lives in a Binary referenced by `attachment.url` (default 0.25). */
  binaryNoteShare?: number;
  /**
   * Plants statements with known answers (plantedStatements) in two notes of each patient: the latest
   * full note and the fourth latest. Off by default; everything else about the patient stays the same.
   */
  plantFacts?: boolean;
}

/** A planted statement and the note that holds it: the truth an evaluation checks drafts against. */
export interface PlantedFact {
  key: string;
  text: string;
  terms: string[];
  /** `DocumentReference/<id>` of the note the statement is written in. */
  note: string;
}

export interface SyntheticPatient {
  patientId: string;
  profile: SandboxPatientProfile;
  /** Patient first, then the rest; ids and references consistent within the array. */
  resources: FhirResource[];
  /** Statements planted in notes (empty unless `plantFacts`). */
  plantedFacts: PlantedFact[];
}

export const sandboxIdentifierSystems = {
  medicalRecordNumber: 'urn:ehr-draft-agent:sandbox:mrn',
  document: 'urn:ehr-draft-agent:sandbox:document',
} as const;

const dayMs = 86_400_000;

const givenNames = {
  female: ['Ada', 'Bea', 'Cora', 'Dina', 'Edie', 'Fay', 'Gwen', 'Hattie', 'Iris', 'June', 'Kit', 'Lena'],
  male: ['Abe', 'Bram', 'Cyril', 'Dov', 'Ezra', 'Finn', 'Gus', 'Hal', 'Ike', 'Jory', 'Kurt', 'Lyle'],
} as const;
const familyNames = [
  'Testperson',
  'Sampleton',
  'Mockford',
  'Fakely',
  'Placeholder',
  'Synthetica',
  'Demoson',
  'Exampleby',
  'Fixturewell',
  'Dummington',
];

function startOfUtcDay(date: Date): Date {
  return new Date(Date.UTC(date.getUTCFullYear(), date.getUTCMonth(), date.getUTCDate()));
}

function base64(text: string): string {
  return Buffer.from(text, 'utf8').toString('base64');
}

function round(value: number, digits: number): number {
  const factor = 10 ** digits;
  return Math.round(value * factor) / factor;
}

interface Visit {
  daysAgo: number;
  start: string;
  end: string;
  kind: 'routine' | 'lab';
  /** Position among routine visits counted from the most recent (0 = latest). */
  routineFromEnd?: number;
  labs: Set<'hba1c' | 'renal' | 'phq9'>;
}

class PatientBuilder {
  readonly resources: FhirResource[] = [];
  private readonly counters = new Map<string, number>();
  readonly patientId: string;
  readonly subject: Reference;
  private readonly now: Date;

  constructor(patientId: string, now: Date) {
    this.patientId = patientId;
    this.subject = { reference: `Patient/${patientId}` };
    this.now = now;
  }

  id(kind: string): string {
    const next = (this.counters.get(kind) ?? 0) + 1;
    this.counters.set(kind, next);
    return `${this.patientId}-${kind}-${String(next).padStart(4, '0')}`;
  }

  /** An instant `daysAgo` days before now at the given UTC hour and minute (negative: the future). */
  at(daysAgo: number, hour: number, minute = 0): string {
    const day = new Date(this.now.getTime() - daysAgo * dayMs);
    day.setUTCHours(hour, minute, 0, 0);
    return day.toISOString();
  }

  add<T extends FhirResource>(resource: T): T {
    this.resources.push(resource);
    return resource;
  }
}

function shuffled<T>(items: readonly T[], random: SeededRandom): T[] {
  const copy = [...items];
  for (let index = copy.length - 1; index > 0; index--) {
    const other = random.integer(0, index);
    [copy[index], copy[other]] = [copy[other], copy[index]];
  }
  return copy;
}

function birthDateFor(now: Date, ageYears: number, random: SeededRandom): string {
  // Between 30 and 300 days past the birthday: the age in whole years is exactly ageYears.
  const birthday = new Date(now.getTime());
  birthday.setUTCFullYear(birthday.getUTCFullYear() - ageYears);
  return new Date(birthday.getTime() - random.integer(30, 300) * dayMs).toISOString().slice(0, 10);
}

function repeatedDaysAgo(latest: number | undefined, interval: number, limit: number): number[] {
  if (latest === undefined) return [];
  const days: number[] = [];
  for (let day = latest; day <= limit; day += interval) days.push(day);
  return days.length ? days : [latest];
}

function planVisits(plan: ClinicalPlan, builder: PatientBuilder, random: SeededRandom): Visit[] {
  const historyDays = Math.round(plan.historyYears * 365);
  const visits = new Map<number, Visit>();
  const routineCount = Math.max(2, plan.routineVisits);
  for (let index = 0; index < routineCount; index++) {
    const fromEnd = routineCount - 1 - index;
    const daysAgo =
      7 + Math.round(((historyDays - 7) * fromEnd) / (routineCount - 1)) + (fromEnd > 0 ? 1 : 0);
    const hour = random.integer(13, 20);
    visits.set(daysAgo, {
      daysAgo,
      start: builder.at(daysAgo, hour),
      end: builder.at(daysAgo, hour, random.integer(20, 45)),
      kind: 'routine',
      routineFromEnd: fromEnd,
      labs: new Set(),
    });
  }
  const labVisit = (daysAgo: number, lab: 'hba1c' | 'renal' | 'phq9') => {
    // A lab falls on its own short visit; routine visits keep the blood pressure history unambiguous.
    let day = daysAgo;
    while (visits.get(day)?.kind === 'routine') day += 1;
    let visit = visits.get(day);
    if (!visit) {
      const hour = random.integer(13, 20);
      visit = {
        daysAgo: day,
        start: builder.at(day, hour),
        end: builder.at(day, hour, 15),
        kind: 'lab',
        labs: new Set(),
      };
      visits.set(day, visit);
    }
    visit.labs.add(lab);
  };
  if (plan.conditions.includes('diabetes'))
    for (const day of repeatedDaysAgo(plan.hba1cDaysAgo, 120, historyDays)) labVisit(day, 'hba1c');
  for (const day of repeatedDaysAgo(plan.renalPanelDaysAgo, 365, historyDays)) labVisit(day, 'renal');
  for (const day of repeatedDaysAgo(plan.phq9DaysAgo, 365, historyDays)) labVisit(day, 'phq9');
  return [...visits.values()].sort((left, right) => right.daysAgo - left.daysAgo);
}

function quantityObservation(
  builder: PatientBuilder,
  key: 'hba1c' | 'potassium' | 'creatinine' | 'ldl' | 'bmi' | 'phq9',
  value: number,
  encounterId: string,
  when: string,
): Observation {
  const code = observationCodes[key];
  const category = key === 'bmi' ? 'vital-signs' : key === 'phq9' ? 'survey' : 'laboratory';
  return builder.add<Observation>({
    resourceType: 'Observation',
    id: builder.id('obs'),
    status: 'final',
    category: [
      concept(
        systems.observationCategory,
        category,
        category === 'vital-signs' ? 'Vital Signs' : category === 'survey' ? 'Survey' : 'Laboratory',
      ),
    ],
    code: concept(systems.loinc, code.code, code.display),
    subject: builder.subject,
    encounter: { reference: `Encounter/${encounterId}` },
    effectiveDateTime: when,
    issued: when,
    valueQuantity: { value, unit: code.unit, system: systems.ucum, code: code.ucum },
  });
}

function bloodPressureObservation(
  builder: PatientBuilder,
  systolic: number,
  diastolic: number,
  encounterId: string,
  when: string,
): Observation {
  const component = (key: 'systolic' | 'diastolic', value: number) => ({
    code: concept(systems.loinc, observationCodes[key].code, observationCodes[key].display),
    valueQuantity: { value, unit: 'mmHg', system: systems.ucum, code: 'mm[Hg]' },
  });
  return builder.add<Observation>({
    resourceType: 'Observation',
    id: builder.id('obs'),
    status: 'final',
    category: [concept(systems.observationCategory, 'vital-signs', 'Vital Signs')],
    code: concept(
      systems.loinc,
      observationCodes.bloodPressurePanel.code,
      observationCodes.bloodPressurePanel.display,
    ),
    subject: builder.subject,
    encounter: { reference: `Encounter/${encounterId}` },
    effectiveDateTime: when,
    component: [component('systolic', systolic), component('diastolic', diastolic)],
  });
}

function bloodPressureFor(plan: ClinicalPlan, fromEnd: number, random: SeededRandom) {
  const high = () => ({ systolic: random.integer(146, 168), diastolic: random.integer(84, 98) });
  const controlled = () => ({ systolic: random.integer(112, 134), diastolic: random.integer(68, 84) });
  if (fromEnd === 0) return plan.bloodPressure === 'high-twice' ? high() : controlled();
  if (fromEnd === 1) return plan.bloodPressure === 'controlled' ? controlled() : high();
  return plan.conditions.includes('hypertension') && random.chance(0.3) ? high() : controlled();
}

function addClinicalBackground(
  plan: ClinicalPlan,
  builder: PatientBuilder,
  random: SeededRandom,
  birthDate: string,
) {
  const historyDays = Math.round(plan.historyYears * 365);
  // Chronic problems began before the visible history but after the patient turned 18.
  const adultDays = Math.floor((Date.parse(builder.at(0, 0)) - Date.parse(birthDate)) / dayMs) - 18 * 365;
  const onsetDaysAgo = () =>
    historyDays + random.integer(30, Math.max(60, Math.min(1500, adultDays - historyDays)));
  for (const key of plan.conditions) {
    const code = conditionCodes[key];
    builder.add<Condition>({
      resourceType: 'Condition',
      id: builder.id('cond'),
      clinicalStatus: concept(systems.conditionClinical, 'active', 'Active'),
      verificationStatus: concept(systems.conditionVerification, 'confirmed', 'Confirmed'),
      category: [concept(systems.conditionCategory, 'problem-list-item', 'Problem List Item')],
      code: concept(systems.snomed, code.code, code.display),
      subject: builder.subject,
      onsetDateTime: builder.at(onsetDaysAgo(), 15),
      recordedDate: builder.at(historyDays, 15),
    });
  }
  const resolvedCount = random.integer(0, 3);
  for (let index = 0; index < resolvedCount; index++) {
    const code = random.pick(resolvedConditionCodes);
    const daysAgo = random.integer(60, historyDays);
    builder.add<Condition>({
      resourceType: 'Condition',
      id: builder.id('cond'),
      clinicalStatus: concept(systems.conditionClinical, 'resolved', 'Resolved'),
      verificationStatus: concept(systems.conditionVerification, 'confirmed', 'Confirmed'),
      category: [concept(systems.conditionCategory, 'encounter-diagnosis', 'Encounter Diagnosis')],
      code: concept(systems.snomed, code.code, code.display),
      subject: builder.subject,
      onsetDateTime: builder.at(daysAgo, 14),
      abatementDateTime: builder.at(daysAgo - random.integer(7, 30), 14),
      recordedDate: builder.at(daysAgo, 14),
    });
  }
  const medicationRequest = (key: keyof typeof medicationCodes, status: 'active' | 'stopped') => {
    const medication = medicationCodes[key];
    const authoredDaysAgo =
      status === 'active' ? random.integer(20, historyDays) : historyDays + random.integer(30, 400);
    builder.add<MedicationRequest>({
      resourceType: 'MedicationRequest',
      id: builder.id('medrx'),
      status,
      intent: 'order',
      category: [concept(systems.medicationRequestCategory, 'community', 'Community')],
      medicationCodeableConcept: concept(
        systems.rxnorm,
        medication.code,
        medication.display,
        medication.product,
      ),
      subject: builder.subject,
      authoredOn: builder.at(authoredDaysAgo, 16),
      requester: { display: 'Dr. Sandbox Clinician (synthetic)' },
      dosageInstruction: [{ text: medication.sig }],
    });
  };
  for (const key of plan.stoppedMedications) medicationRequest(key, 'stopped');
  for (const key of plan.medications) medicationRequest(key, 'active');

  const allergies = shuffled(allergyCodes, random).slice(0, plan.allergyCount);
  if (allergies.length === 0) {
    builder.add<AllergyIntolerance>({
      resourceType: 'AllergyIntolerance',
      id: builder.id('allergy'),
      clinicalStatus: concept(systems.allergyClinical, 'active', 'Active'),
      verificationStatus: concept(systems.allergyVerification, 'confirmed', 'Confirmed'),
      code: concept(systems.snomed, noKnownAllergy.code, noKnownAllergy.display),
      patient: builder.subject,
      recordedDate: builder.at(historyDays, 15),
    });
  }
  for (const allergy of allergies) {
    builder.add<AllergyIntolerance>({
      resourceType: 'AllergyIntolerance',
      id: builder.id('allergy'),
      clinicalStatus: concept(systems.allergyClinical, 'active', 'Active'),
      verificationStatus: concept(systems.allergyVerification, 'confirmed', 'Confirmed'),
      type: 'allergy',
      category: [allergy.category],
      criticality: allergy.reaction === 'Anaphylaxis' ? 'high' : 'low',
      code: concept(systems.snomed, allergy.code, allergy.display),
      patient: builder.subject,
      recordedDate: builder.at(historyDays + random.integer(10, 400), 15),
      reaction: [{ manifestation: [{ text: allergy.reaction }] }],
    });
  }

  const immunization = (vaccine: { code: string; display: string }, daysAgo: number) =>
    builder.add<Immunization>({
      resourceType: 'Immunization',
      id: builder.id('imm'),
      status: 'completed',
      vaccineCode: concept(systems.cvx, vaccine.code, vaccine.display),
      patient: builder.subject,
      occurrenceDateTime: builder.at(daysAgo, 15),
      primarySource: true,
    });
  for (const daysAgo of repeatedDaysAgo(plan.influenzaDaysAgo, 365, historyDays)) {
    immunization(
      random.chance(0.5) ? vaccineCodes.influenza : vaccineCodes.influenzaPreservativeFree,
      daysAgo,
    );
  }
  if (plan.pneumococcal) {
    immunization(
      random.pick([
        vaccineCodes.pneumococcalConjugate13,
        vaccineCodes.pneumococcalConjugate15,
        vaccineCodes.pneumococcalPolysaccharide,
      ]),
      random.integer(200, Math.max(400, historyDays)),
    );
  }
  if (random.chance(0.6)) immunization(vaccineCodes.tdap, random.integer(100, historyDays + 1500));
  if (plan.colonoscopyYearsAgo !== undefined) {
    const performed = builder.at(Math.round(plan.colonoscopyYearsAgo * 365.25) - random.integer(0, 30), 14);
    builder.add<Procedure>({
      resourceType: 'Procedure',
      id: builder.id('proc'),
      status: 'completed',
      code: concept(systems.snomed, procedureCodes.colonoscopy.code, procedureCodes.colonoscopy.display),
      subject: builder.subject,
      performedDateTime: performed,
    });
  }
}

function addEncountersAndNotes(
  plan: ClinicalPlan,
  builder: PatientBuilder,
  clinicalRandom: SeededRandom,
  noteRandom: SeededRandom,
  options: GeneratePatientsOptions,
  patientIndex: number,
): PlantedFact[] {
  const visits = planVisits(plan, builder, clinicalRandom);
  const notesPerEncounter = options.notesPerEncounter ?? plan.notesPerEncounter;
  const binaryShare = options.binaryNoteShare ?? 0.25;
  // The note budget goes to the most recent visits: walk from the end, then write in date order.
  let budget = options.maxNotesPerPatient ?? Number.POSITIVE_INFINITY;
  const notesAt = new Array<number>(visits.length).fill(0);
  for (let index = visits.length - 1; index >= 0 && budget > 0; index--) {
    notesAt[index] = Math.min(notesPerEncounter, budget);
    budget -= notesAt[index];
  }
  // The statements go to the latest full note and the fourth latest (one per visit with notes).
  const plantedAt = new Map<number, (typeof plantedStatements)[number]>();
  if (options.plantFacts) {
    const noted = visits.flatMap((_, index) => (notesAt[index] > 0 ? [index] : []));
    const targets = [noted.at(-1), noted.length >= 4 ? noted.at(-4) : undefined];
    targets.forEach((visitIndex, order) => {
      if (visitIndex === undefined) return;
      plantedAt.set(visitIndex, plantedStatements[(2 * patientIndex + order) % plantedStatements.length]);
    });
  }
  const planted: PlantedFact[] = [];
  const results: NoteContext['results'] = {};
  const obese = plan.conditions.includes('obesity');
  const baseBmi = obese ? clinicalRandom.between(31, 37) : clinicalRandom.between(21, 28.5);
  const diabetic = plan.conditions.includes('diabetes');
  const kidneyDisease = plan.conditions.includes('chronicKidneyDisease');
  const depressed = plan.conditions.includes('depression');

  visits.forEach((visit, index) => {
    const encounterType =
      visit.kind === 'lab'
        ? encounterTypes[1]
        : index === 0
          ? encounterTypes[0]
          : clinicalRandom.pick(encounterTypes);
    const encounter = builder.add<Encounter>({
      resourceType: 'Encounter',
      id: builder.id('enc'),
      status: 'finished',
      class: { system: systems.actCode, code: 'AMB', display: 'ambulatory' },
      type: [concept(systems.snomed, encounterType.code, encounterType.display)],
      subject: builder.subject,
      participant: [{ individual: { display: 'Dr. Sandbox Clinician (synthetic)' } }],
      period: { start: visit.start, end: visit.end },
      ...(visit.kind === 'lab' ? { reasonCode: [{ text: 'Laboratory and screening follow-up' }] } : {}),
    });
    const doneToday: string[] = [];
    let bloodPressure: NoteContext['bloodPressure'];
    let bmi: number | undefined;
    const record = (key: keyof NoteContext['results'], value: number) => {
      quantityObservation(builder, key, value, encounter.id!, visit.start);
      results[key] = { value, date: visit.start } satisfies LatestResult;
    };
    if (visit.kind === 'routine') {
      bloodPressure = bloodPressureFor(plan, visit.routineFromEnd ?? 99, clinicalRandom);
      bloodPressureObservation(
        builder,
        bloodPressure.systolic,
        bloodPressure.diastolic,
        encounter.id!,
        visit.start,
      );
      bmi = round(baseBmi + clinicalRandom.between(-0.8, 0.8), 1);
      quantityObservation(builder, 'bmi', bmi, encounter.id!, visit.start);
    }
    if (visit.labs.has('hba1c') && diabetic) {
      record('hba1c', round(clinicalRandom.between(6.4, 9.2), 1));
      doneToday.push('HbA1c drawn today');
    }
    if (visit.labs.has('renal')) {
      record('potassium', round(clinicalRandom.between(3.8, 5.1), 1));
      record(
        'creatinine',
        round(kidneyDisease ? clinicalRandom.between(1.4, 2.1) : clinicalRandom.between(0.7, 1.2), 2),
      );
      if (plan.conditions.includes('hyperlipidemia')) record('ldl', clinicalRandom.integer(70, 160));
      doneToday.push('Basic metabolic panel drawn (potassium, creatinine)');
    }
    if (visit.labs.has('phq9')) {
      record('phq9', depressed ? clinicalRandom.integer(3, 14) : clinicalRandom.integer(0, 6));
      doneToday.push(`PHQ-9 completed, score ${results.phq9?.value}`);
    }
    for (let noteIndex = 0; noteIndex < notesAt[index]; noteIndex++) {
      const text = progressNoteText(
        {
          date: visit.end,
          visitKind: encounterType.noteLabel,
          reason: visit.kind === 'lab' ? 'Laboratory and screening follow-up' : undefined,
          ageYears: plan.ageYears - Math.floor(visit.daysAgo / 365.25),
          gender: plan.gender,
          conditions: plan.conditions,
          medications: plan.medications,
          bloodPressure,
          bmi,
          results: { ...results },
          doneToday,
          followUp: noteIndex > 0,
          planted: noteIndex === 0 ? plantedAt.get(index)?.text : undefined,
        },
        noteRandom,
      );
      const contentType = 'text/plain; charset=utf-8';
      const documentId = builder.id('note');
      const statement = noteIndex === 0 ? plantedAt.get(index) : undefined;
      if (statement)
        planted.push({ ...statement, terms: [...statement.terms], note: `DocumentReference/${documentId}` });
      let attachment: { contentType: string; data?: string; url?: string; title: string };
      if (noteRandom.chance(binaryShare)) {
        const binary = builder.add<Binary>({
          resourceType: 'Binary',
          id: builder.id('bin'),
          contentType,
          data: base64(text),
        });
        attachment = { contentType, url: `Binary/${binary.id}`, title: 'Progress note' };
      } else {
        attachment = { contentType, data: base64(text), title: 'Progress note' };
      }
      builder.add<DocumentReference>({
        resourceType: 'DocumentReference',
        id: documentId,
        identifier: [{ system: sandboxIdentifierSystems.document, value: documentId }],
        status: 'current',
        docStatus: 'final',
        type: concept(systems.loinc, progressNoteType.code, progressNoteType.display),
        category: [concept(systems.documentCategory, 'clinical-note', 'Clinical Note')],
        subject: builder.subject,
        date: visit.end,
        author: [{ display: 'Dr. Sandbox Clinician (synthetic)' }],
        content: [{ attachment }],
        context: {
          encounter: [{ reference: `Encounter/${encounter.id}` }],
          period: { start: visit.start, end: visit.end },
        },
      });
    }
  });

  if (plan.plannedVisitInDays !== undefined) {
    const start = builder.at(-plan.plannedVisitInDays, 15);
    builder.add<Encounter>({
      resourceType: 'Encounter',
      id: builder.id('enc'),
      status: 'planned',
      class: { system: systems.actCode, code: 'AMB', display: 'ambulatory' },
      type: [concept(systems.snomed, encounterTypes[1].code, encounterTypes[1].display)],
      subject: builder.subject,
      period: { start, end: builder.at(-plan.plannedVisitInDays, 15, 30) },
    });
  }
  return planted;
}

export function generatePatient(index: number, options: GeneratePatientsOptions): SyntheticPatient {
  const now = options.now ?? startOfUtcDay(new Date());
  const patientRandom = seededRandom(options.seed).fork(index);
  const plan = planFor(index, patientRandom.fork('plan'));
  const clinicalRandom = patientRandom.fork('clinical');
  const noteRandom = patientRandom.fork('notes');
  const patientId = patientIdFor(index);
  const builder = new PatientBuilder(patientId, now);
  const given = clinicalRandom.pick(givenNames[plan.gender]);
  const family = clinicalRandom.pick(familyNames);
  const birthDate = birthDateFor(now, plan.ageYears, clinicalRandom);
  builder.add<Patient>({
    resourceType: 'Patient',
    id: patientId,
    meta: {
      tag: [{ system: 'urn:ehr-draft-agent:sandbox', code: 'synthetic', display: 'Synthetic test patient' }],
    },
    identifier: [{ system: sandboxIdentifierSystems.medicalRecordNumber, value: patientId.toUpperCase() }],
    active: true,
    name: [{ use: 'official', family, given: [given], text: `${given} ${family} (synthetic)` }],
    gender: plan.gender,
    birthDate,
  });
  addClinicalBackground(plan, builder, clinicalRandom, birthDate);
  const plantedFacts = addEncountersAndNotes(plan, builder, clinicalRandom, noteRandom, options, index);
  return { patientId, profile: profileFor(index, plan), resources: builder.resources, plantedFacts };
}

/** Generates `count` patients; patient N is the same for the same seed, now and knobs whatever the count. */
export function generatePatients(options: GeneratePatientsOptions): SyntheticPatient[] {
  const patients: SyntheticPatient[] = [];
  for (let index = 0; index < options.count; index++) patients.push(generatePatient(index, options));
  return patients;
}
