import type { ConditionKey, MedicationKey } from './clinical-codes.ts';
import { medicationCodes } from './clinical-codes.ts';
import type { SeededRandom } from './seeded-random.ts';

/**
 * What each synthetic patient is meant to exercise. The first patients are fixed scenarios that tests
 * and demos pick by key; the rest of a population is drawn at random from the same ingredients.
 * Every plan keeps its dates well away from guideline thresholds (6 months, 12 months, 10 years,
 * ages 40/45/65/75) so that a correct rule cannot disagree with the catalogue over an edge case.
 */
export const ruleSituations = [
  /** Diabetes, no HbA1c in the last 183 days (ADA). */
  'hba1c-overdue',
  /** Diabetes, aged 40-75, no active statin (ADA/ACC). */
  'diabetes-statin-missing',
  /** The two most recent blood pressure readings both at or above 140/90 (ACC/AHA). */
  'blood-pressure-above-target',
  /** Aged 45-75, no colonoscopy in the last 10 years (USPSTF). */
  'colorectal-screening-due',
  /** No influenza vaccine (CVX 140/141) in the last 365 days (ACIP). */
  'influenza-vaccine-due',
  /** Aged 65 or over and never had a pneumococcal vaccine (ACIP); 50-64 year olds are always vaccinated. */
  'pneumococcal-vaccine-due',
  /** An active opioid and an active benzodiazepine MedicationRequest at once (CDC 2022). */
  'opioid-benzodiazepine',
  /** An active ACE inhibitor or ARB without both potassium and creatinine in the last 365 days (KDIGO). */
  'ace-arb-monitoring-due',
  /** No PHQ-9 (LOINC 44249-1) in the last 365 days (USPSTF). */
  'depression-screening-due',
] as const;

export type RuleSituation = (typeof ruleSituations)[number];

export type BloodPressurePattern = 'controlled' | 'high-twice' | 'high-once';

export interface ClinicalPlan {
  key: string;
  description: string;
  ageYears: number;
  gender: 'female' | 'male';
  conditions: ConditionKey[];
  /** Active prescriptions. */
  medications: MedicationKey[];
  /** Prescriptions that were stopped before now (history only, must not count as active). */
  stoppedMedications: MedicationKey[];
  /** Days before now of the latest result; undefined: never measured. */
  hba1cDaysAgo?: number;
  renalPanelDaysAgo?: number;
  phq9DaysAgo?: number;
  influenzaDaysAgo?: number;
  colonoscopyYearsAgo?: number;
  pneumococcal: boolean;
  bloodPressure: BloodPressurePattern;
  historyYears: number;
  routineVisits: number;
  notesPerEncounter: number;
  /** Days until a planned (future) visit; undefined: none. */
  plannedVisitInDays?: number;
  allergyCount: number;
}

export interface SandboxPatientProfile {
  index: number;
  patientId: string;
  key: string;
  description: string;
  ageYears: number;
  gender: 'female' | 'male';
  conditions: ConditionKey[];
  medications: MedicationKey[];
  hasPlannedVisit: boolean;
  /** Which rule situations hold for this patient (true: a correct rule fires). */
  situations: Record<RuleSituation, boolean>;
}

export function patientIdFor(index: number): string {
  return `sbx-${String(index).padStart(4, '0')}`;
}

const defaults = {
  stoppedMedications: [] as MedicationKey[],
  pneumococcal: true,
  bloodPressure: 'controlled' as BloodPressurePattern,
  historyYears: 4,
  routineVisits: 8,
  notesPerEncounter: 1,
  allergyCount: 1,
};

/** The fixed scenario patients, in order: patient N of every population is scenario N. */
export const scenarioPlans: readonly ClinicalPlan[] = [
  {
    ...defaults,
    key: 'long-history',
    description:
      'Complex diabetic with CKD, hypertension and hyperlipidemia followed for 8 years: more than 300 progress notes, HbA1c overdue, blood pressure above target twice, a planned visit next week.',
    ageYears: 67,
    gender: 'female',
    conditions: [
      'diabetes',
      'hypertension',
      'hyperlipidemia',
      'chronicKidneyDisease',
      'obesity',
      'osteoarthritis',
    ],
    medications: ['metformin', 'insulinGlargine', 'lisinopril', 'atorvastatin', 'amlodipine'],
    stoppedMedications: ['losartan'],
    hba1cDaysAgo: 250,
    renalPanelDaysAgo: 90,
    phq9DaysAgo: 120,
    influenzaDaysAgo: 40,
    colonoscopyYearsAgo: 4,
    bloodPressure: 'high-twice',
    historyYears: 8,
    routineVisits: 150,
    notesPerEncounter: 2,
    plannedVisitInDays: 7,
    allergyCount: 2,
  },
  {
    ...defaults,
    key: 'diabetic-without-statin',
    description: 'Diabetic aged 58 with hypertension on metformin and lisinopril, no statin.',
    ageYears: 58,
    gender: 'male',
    conditions: ['diabetes', 'hypertension'],
    medications: ['metformin', 'lisinopril'],
    hba1cDaysAgo: 60,
    renalPanelDaysAgo: 100,
    phq9DaysAgo: 200,
    influenzaDaysAgo: 30,
    colonoscopyYearsAgo: 3,
    plannedVisitInDays: 3,
  },
  {
    ...defaults,
    key: 'young-diabetic',
    description:
      'Diabetic aged 34 with obesity: too young for the statin and colorectal rules, all else current.',
    ageYears: 34,
    gender: 'female',
    conditions: ['diabetes', 'obesity'],
    medications: ['metformin'],
    hba1cDaysAgo: 45,
    phq9DaysAgo: 90,
    influenzaDaysAgo: 60,
    pneumococcal: false,
    allergyCount: 0,
  },
  {
    ...defaults,
    key: 'uncontrolled-hypertension',
    description:
      'Hypertension above target on the last two visits, on losartan without potassium or creatinine for over a year.',
    ageYears: 63,
    gender: 'male',
    conditions: ['hypertension', 'hyperlipidemia'],
    medications: ['losartan', 'amlodipine', 'rosuvastatin'],
    renalPanelDaysAgo: 500,
    phq9DaysAgo: 150,
    influenzaDaysAgo: 20,
    colonoscopyYearsAgo: 6,
    bloodPressure: 'high-twice',
    plannedVisitInDays: 14,
  },
  {
    ...defaults,
    key: 'controlled-hypertension',
    description: 'Hypertension on lisinopril with one raised reading before a controlled one; labs current.',
    ageYears: 56,
    gender: 'female',
    conditions: ['hypertension'],
    medications: ['lisinopril'],
    renalPanelDaysAgo: 120,
    phq9DaysAgo: 100,
    influenzaDaysAgo: 35,
    colonoscopyYearsAgo: 2,
    bloodPressure: 'high-once',
  },
  {
    ...defaults,
    key: 'opioid-and-benzodiazepine',
    description:
      'Chronic pain and anxiety with oxycodone and alprazolam co-prescribed; no colonoscopy, no PHQ-9, no influenza vaccine.',
    ageYears: 47,
    gender: 'female',
    conditions: ['chronicPain', 'lowBackPain', 'anxiety'],
    medications: ['oxycodone', 'alprazolam', 'gabapentin'],
    plannedVisitInDays: 2,
  },
  {
    ...defaults,
    key: 'opioid-without-benzodiazepine',
    description: 'Low back pain on hydrocodone; lorazepam was stopped before, so no co-prescription now.',
    ageYears: 52,
    gender: 'male',
    conditions: ['lowBackPain'],
    medications: ['hydrocodone'],
    stoppedMedications: ['lorazepam'],
    phq9DaysAgo: 80,
    influenzaDaysAgo: 50,
    colonoscopyYearsAgo: 2,
  },
  {
    ...defaults,
    key: 'screening-up-to-date',
    description: 'Asthmatic aged 50 with every screening and vaccine current.',
    ageYears: 50,
    gender: 'female',
    conditions: ['asthma'],
    medications: ['albuterol'],
    phq9DaysAgo: 60,
    influenzaDaysAgo: 25,
    colonoscopyYearsAgo: 5,
  },
  {
    ...defaults,
    key: 'older-unvaccinated',
    description: 'Aged 72 on a statin, never vaccinated against influenza or pneumococcus.',
    ageYears: 72,
    gender: 'male',
    conditions: ['hyperlipidemia', 'osteoarthritis'],
    medications: ['atorvastatin'],
    phq9DaysAgo: 200,
    colonoscopyYearsAgo: 8,
    pneumococcal: false,
  },
  {
    ...defaults,
    key: 'young-healthy',
    description: 'Healthy aged 29: no chronic problems, no rule applies.',
    ageYears: 29,
    gender: 'female',
    conditions: [],
    medications: [],
    phq9DaysAgo: 150,
    influenzaDaysAgo: 100,
    pneumococcal: false,
    routineVisits: 4,
    allergyCount: 0,
  },
  {
    ...defaults,
    key: 'managed-depression',
    description: 'Depression on sertraline with a recent PHQ-9; alprazolam stopped.',
    ageYears: 41,
    gender: 'male',
    conditions: ['depression', 'anxiety'],
    medications: ['sertraline'],
    stoppedMedications: ['alprazolam'],
    phq9DaysAgo: 30,
    influenzaDaysAgo: 70,
    pneumococcal: false,
  },
  {
    ...defaults,
    key: 'overdue-diabetic-kidney-disease',
    description:
      'Diabetic with CKD on losartan: HbA1c, renal monitoring, colonoscopy, influenza vaccine and PHQ-9 all overdue.',
    ageYears: 69,
    gender: 'female',
    conditions: ['diabetes', 'chronicKidneyDisease', 'hypertension', 'hyperlipidemia'],
    medications: ['metformin', 'losartan', 'atorvastatin'],
    hba1cDaysAgo: 400,
    renalPanelDaysAgo: 420,
    influenzaDaysAgo: 400,
    colonoscopyYearsAgo: 12,
    historyYears: 5,
    plannedVisitInDays: 5,
  },
];

function hasClass(medications: MedicationKey[], ...classes: string[]): boolean {
  return medications.some((medication) => classes.includes(medicationCodes[medication].medicationClass));
}

export function situationsFor(plan: ClinicalPlan): Record<RuleSituation, boolean> {
  const diabetic = plan.conditions.includes('diabetes');
  const age = plan.ageYears;
  const notWithin = (daysAgo: number | undefined, days: number) => daysAgo === undefined || daysAgo > days;
  return {
    'hba1c-overdue': diabetic && notWithin(plan.hba1cDaysAgo, 183),
    'diabetes-statin-missing': diabetic && age >= 40 && age <= 75 && !hasClass(plan.medications, 'statin'),
    'blood-pressure-above-target': plan.bloodPressure === 'high-twice',
    'colorectal-screening-due':
      age >= 45 && age <= 75 && (plan.colonoscopyYearsAgo === undefined || plan.colonoscopyYearsAgo >= 10),
    'influenza-vaccine-due': notWithin(plan.influenzaDaysAgo, 365),
    'pneumococcal-vaccine-due': age >= 65 && !plan.pneumococcal,
    'opioid-benzodiazepine':
      hasClass(plan.medications, 'opioid') && hasClass(plan.medications, 'benzodiazepine'),
    'ace-arb-monitoring-due':
      hasClass(plan.medications, 'ace-inhibitor', 'arb') && notWithin(plan.renalPanelDaysAgo, 365),
    'depression-screening-due': notWithin(plan.phq9DaysAgo, 365),
  };
}

/** Days ago either clearly inside a window or clearly outside it (or never). */
function recentOrOverdue(random: SeededRandom, window: number, recentChance: number, neverChance: number) {
  if (random.chance(recentChance)) return random.integer(15, Math.floor(window * 0.8));
  if (random.chance(neverChance)) return undefined;
  return random.integer(Math.ceil(window * 1.2), window * 3);
}

/** A random adult primary-care patient, for populations beyond the fixed scenarios. */
export function randomPlan(random: SeededRandom, index: number): ClinicalPlan {
  // Ages avoid the thresholds the rules use so birthdays cannot flip a rule.
  let ageYears = random.integer(22, 88);
  if ([39, 40, 44, 45, 64, 65, 75, 76].includes(ageYears)) ageYears += 2;
  const older = ageYears >= 50;
  const conditions: ConditionKey[] = [];
  const medications: MedicationKey[] = [];
  const stoppedMedications: MedicationKey[] = [];
  if (random.chance(older ? 0.3 : 0.1)) {
    conditions.push('diabetes');
    medications.push('metformin');
    if (random.chance(0.2)) medications.push('insulinGlargine');
  }
  if (random.chance(older ? 0.45 : 0.15)) {
    conditions.push('hypertension');
    medications.push(random.pick(['lisinopril', 'losartan'] as const));
    if (random.chance(0.3)) medications.push('amlodipine');
  }
  if (random.chance(older ? 0.35 : 0.12)) {
    conditions.push('hyperlipidemia');
  }
  const wantsStatin = conditions.includes('hyperlipidemia') || conditions.includes('diabetes');
  if (wantsStatin && random.chance(0.65))
    medications.push(random.pick(['atorvastatin', 'rosuvastatin'] as const));
  if (conditions.includes('diabetes') && random.chance(0.25)) conditions.push('chronicKidneyDisease');
  if (random.chance(0.15)) {
    conditions.push('depression');
    medications.push('sertraline');
  }
  if (random.chance(0.12)) {
    conditions.push(random.pick(['chronicPain', 'lowBackPain'] as const));
    medications.push(random.pick(['oxycodone', 'hydrocodone', 'gabapentin'] as const));
  }
  if (random.chance(0.12)) {
    conditions.push('anxiety');
    const benzodiazepine = random.pick(['alprazolam', 'lorazepam'] as const);
    if (random.chance(0.5)) medications.push(benzodiazepine);
    else stoppedMedications.push(benzodiazepine);
  }
  if (random.chance(0.2)) conditions.push('obesity');
  if (random.chance(0.08)) {
    conditions.push('asthma');
    medications.push('albuterol');
  }
  if (older && random.chance(0.2)) conditions.push('osteoarthritis');

  const onAceOrArb = medications.includes('lisinopril') || medications.includes('losartan');
  const needsRenalPanel = onAceOrArb || conditions.includes('chronicKidneyDisease');
  const colonoscopyYearsAgo =
    ageYears >= 45 && random.chance(0.6) ? random.pick([1, 2, 3, 5, 7, 8, 12, 14]) : undefined;
  return {
    key: `random-${index}`,
    description: 'Randomly drawn adult primary-care patient.',
    ageYears,
    gender: random.chance(0.5) ? 'female' : 'male',
    conditions,
    medications,
    stoppedMedications,
    hba1cDaysAgo: conditions.includes('diabetes') ? recentOrOverdue(random, 183, 0.6, 0.2) : undefined,
    renalPanelDaysAgo: needsRenalPanel ? recentOrOverdue(random, 365, 0.65, 0.3) : undefined,
    phq9DaysAgo: recentOrOverdue(random, 365, 0.55, 0.4),
    influenzaDaysAgo: recentOrOverdue(random, 365, 0.5, 0.4),
    colonoscopyYearsAgo,
    // 50-64 year olds are always vaccinated so rules written to either ACIP age threshold agree.
    pneumococcal: ageYears < 50 ? random.chance(0.1) : ageYears < 65 ? true : random.chance(0.6),
    bloodPressure: conditions.includes('hypertension')
      ? random.pick(['controlled', 'high-twice', 'high-once'] as const)
      : 'controlled',
    historyYears: random.integer(2, 6),
    routineVisits: random.integer(4, 14),
    notesPerEncounter: 1,
    plannedVisitInDays: random.chance(0.2) ? random.integer(1, 30) : undefined,
    allergyCount: random.pick([0, 0, 1, 1, 2]),
  };
}

export function planFor(index: number, random: SeededRandom): ClinicalPlan {
  return index < scenarioPlans.length ? scenarioPlans[index] : randomPlan(random, index);
}

export function profileFor(index: number, plan: ClinicalPlan): SandboxPatientProfile {
  return {
    index,
    patientId: patientIdFor(index),
    key: plan.key,
    description: plan.description,
    ageYears: plan.ageYears,
    gender: plan.gender,
    conditions: [...plan.conditions],
    medications: [...plan.medications],
    hasPlannedVisit: plan.plannedVisitInDays !== undefined,
    situations: situationsFor(plan),
  };
}

/** The catalogue of fixed scenario patients (the same for every seed: the seed varies names, values and wording). */
export const sandboxPatientProfiles: readonly SandboxPatientProfile[] = scenarioPlans.map((plan, index) =>
  profileFor(index, plan),
);

export function sandboxProfileByKey(key: string): SandboxPatientProfile {
  const profile = sandboxPatientProfiles.find((candidate) => candidate.key === key);
  if (!profile) throw new Error(`no sandbox patient profile '${key}'`);
  return profile;
}
