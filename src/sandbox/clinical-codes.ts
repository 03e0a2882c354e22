import type { CodeableConcept } from 'fhir/r4.js';

/**
 * The terminology the synthetic patients use: SNOMED CT problems and procedures, RxNorm ingredients,
 * LOINC observations and notes, CVX vaccines. Medications are coded at the ingredient level (RxNorm
 * TTY IN), which is what guideline value sets and simple rules match on; the dose lives in the text.
 */
export const systems = {
  snomed: 'http://snomed.info/sct',
  loinc: 'http://loinc.org',
  rxnorm: 'http://www.nlm.nih.gov/research/umls/rxnorm',
  cvx: 'http://hl7.org/fhir/sid/cvx',
  ucum: 'http://unitsofmeasure.org',
  conditionClinical: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
  conditionVerification: 'http://terminology.hl7.org/CodeSystem/condition-ver-status',
  conditionCategory: 'http://terminology.hl7.org/CodeSystem/condition-category',
  observationCategory: 'http://terminology.hl7.org/CodeSystem/observation-category',
  actCode: 'http://terminology.hl7.org/CodeSystem/v3-ActCode',
  allergyClinical: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical',
  allergyVerification: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-verification',
  documentCategory: 'http://hl7.org/fhir/us/core/CodeSystem/us-core-documentreference-category',
  medicationRequestCategory: 'http://terminology.hl7.org/CodeSystem/medicationrequest-category',
} as const;

export function concept(system: string, code: string, display: string, text = display): CodeableConcept {
  return { coding: [{ system, code, display }], text };
}

export type ConditionKey =
  | 'diabetes'
  | 'hypertension'
  | 'hyperlipidemia'
  | 'chronicKidneyDisease'
  | 'depression'
  | 'chronicPain'
  | 'lowBackPain'
  | 'anxiety'
  | 'obesity'
  | 'asthma'
  | 'osteoarthritis';

export interface ConditionCode {
  code: string;
  display: string;
  /** How a clinician names it in a note's assessment. */
  noteName: string;
}

export const conditionCodes: Record<ConditionKey, ConditionCode> = {
  diabetes: { code: '44054006', display: 'Diabetes mellitus type 2', noteName: 'Type 2 diabetes mellitus' },
  hypertension: { code: '38341003', display: 'Hypertension', noteName: 'Essential hypertension' },
  hyperlipidemia: { code: '55822004', display: 'Hyperlipidemia', noteName: 'Hyperlipidemia' },
  chronicKidneyDisease: {
    code: '433144002',
    display: 'Chronic kidney disease stage 3',
    noteName: 'CKD stage 3',
  },
  depression: { code: '35489007', display: 'Depressive disorder', noteName: 'Depression' },
  chronicPain: { code: '82423001', display: 'Chronic pain', noteName: 'Chronic pain syndrome' },
  lowBackPain: { code: '279039007', display: 'Low back pain', noteName: 'Chronic low back pain' },
  anxiety: { code: '197480006', display: 'Anxiety disorder', noteName: 'Generalized anxiety' },
  obesity: { code: '414916001', display: 'Obesity', noteName: 'Obesity' },
  asthma: { code: '195967001', display: 'Asthma', noteName: 'Asthma' },
  osteoarthritis: { code: '396275006', display: 'Osteoarthritis', noteName: 'Osteoarthritis of knee' },
};

/** Self-limited problems that appear as resolved conditions in a history. */
export const resolvedConditionCodes: readonly ConditionCode[] = [
  { code: '10509002', display: 'Acute bronchitis', noteName: 'Acute bronchitis' },
  { code: '36971009', display: 'Sinusitis', noteName: 'Sinusitis' },
  { code: '68566005', display: 'Urinary tract infectious disease', noteName: 'Urinary tract infection' },
  { code: '44465007', display: 'Sprain of ankle', noteName: 'Ankle sprain' },
  { code: '195662009', display: 'Acute viral pharyngitis', noteName: 'Viral pharyngitis' },
];

export type MedicationKey =
  | 'metformin'
  | 'insulinGlargine'
  | 'lisinopril'
  | 'losartan'
  | 'amlodipine'
  | 'atorvastatin'
  | 'rosuvastatin'
  | 'oxycodone'
  | 'hydrocodone'
  | 'alprazolam'
  | 'lorazepam'
  | 'sertraline'
  | 'gabapentin'
  | 'albuterol';

export type MedicationClass =
  | 'biguanide'
  | 'insulin'
  | 'ace-inhibitor'
  | 'arb'
  | 'calcium-channel-blocker'
  | 'statin'
  | 'opioid'
  | 'benzodiazepine'
  | 'ssri'
  | 'anticonvulsant'
  | 'bronchodilator';

export interface MedicationCode {
  /** RxNorm ingredient (TTY IN). */
  code: string;
  display: string;
  medicationClass: MedicationClass;
  /** The prescription as written, for the request's text and the notes. */
  sig: string;
  product: string;
}

export const medicationCodes: Record<MedicationKey, MedicationCode> = {
  metformin: {
    code: '6809',
    display: 'metformin',
    medicationClass: 'biguanide',
    product: 'metformin 500 mg oral tablet',
    sig: '500 mg by mouth twice daily with meals',
  },
  insulinGlargine: {
    code: '274783',
    display: 'insulin glargine',
    medicationClass: 'insulin',
    product: 'insulin glargine 100 units/mL injection',
    sig: '20 units subcutaneously at bedtime',
  },
  lisinopril: {
    code: '29046',
    display: 'lisinopril',
    medicationClass: 'ace-inhibitor',
    product: 'lisinopril 10 mg oral tablet',
    sig: '10 mg by mouth once daily',
  },
  losartan: {
    code: '52175',
    display: 'losartan',
    medicationClass: 'arb',
    product: 'losartan potassium 50 mg oral tablet',
    sig: '50 mg by mouth once daily',
  },
  amlodipine: {
    code: '17767',
    display: 'amlodipine',
    medicationClass: 'calcium-channel-blocker',
    product: 'amlodipine 5 mg oral tablet',
    sig: '5 mg by mouth once daily',
  },
  atorvastatin: {
    code: '83367',
    display: 'atorvastatin',
    medicationClass: 'statin',
    product: 'atorvastatin 40 mg oral tablet',
    sig: '40 mg by mouth at bedtime',
  },
  rosuvastatin: {
    code: '301542',
    display: 'rosuvastatin',
    medicationClass: 'statin',
    product: 'rosuvastatin 10 mg oral tablet',
    sig: '10 mg by mouth once daily',
  },
  oxycodone: {
    code: '7804',
    display: 'oxycodone',
    medicationClass: 'opioid',
    product: 'oxycodone hydrochloride 5 mg oral tablet',
    sig: '5 mg by mouth every 6 hours as needed for pain',
  },
  hydrocodone: {
    code: '5489',
    display: 'hydrocodone',
    medicationClass: 'opioid',
    product: 'hydrocodone 5 mg / acetaminophen 325 mg oral tablet',
    sig: '1 tablet by mouth every 6 hours as needed for pain',
  },
  alprazolam: {
    code: '596',
    display: 'alprazolam',
    medicationClass: 'benzodiazepine',
    product: 'alprazolam 0.5 mg oral tablet',
    sig: '0.5 mg by mouth three times daily as needed for anxiety',
  },
  lorazepam: {
    code: '6470',
    display: 'lorazepam',
    medicationClass: 'benzodiazepine',
    product: 'lorazepam 1 mg oral tablet',
    sig: '1 mg by mouth at bedtime as needed',
  },
  sertraline: {
    code: '36437',
    display: 'sertraline',
    medicationClass: 'ssri',
    product: 'sertraline 50 mg oral tablet',
    sig: '50 mg by mouth once daily',
  },
  gabapentin: {
    code: '25480',
    display: 'gabapentin',
    medicationClass: 'anticonvulsant',
    product: 'gabapentin 300 mg oral capsule',
    sig: '300 mg by mouth three times daily',
  },
  albuterol: {
    code: '435',
    display: 'albuterol',
    medicationClass: 'bronchodilator',
    product: 'albuterol 90 mcg/actuation metered dose inhaler',
    sig: '2 puffs every 4 hours as needed for wheeze',
  },
};

export const observationCodes = {
  hba1c: { code: '4548-4', display: 'Hemoglobin A1c/Hemoglobin.total in Blood', unit: '%', ucum: '%' },
  bloodPressurePanel: { code: '85354-9', display: 'Blood pressure panel with all children optional' },
  systolic: { code: '8480-6', display: 'Systolic blood pressure', unit: 'mmHg', ucum: 'mm[Hg]' },
  diastolic: { code: '8462-4', display: 'Diastolic blood pressure', unit: 'mmHg', ucum: 'mm[Hg]' },
  potassium: {
    code: '2823-3',
    display: 'Potassium [Moles/volume] in Serum or Plasma',
    unit: 'mmol/L',
    ucum: 'mmol/L',
  },
  creatinine: {
    code: '2160-0',
    display: 'Creatinine [Mass/volume] in Serum or Plasma',
    unit: 'mg/dL',
    ucum: 'mg/dL',
  },
  ldl: {
    code: '2089-1',
    display: 'Cholesterol in LDL [Mass/volume] in Serum or Plasma',
    unit: 'mg/dL',
    ucum: 'mg/dL',
  },
  bmi: { code: '39156-5', display: 'Body mass index (BMI) [Ratio]', unit: 'kg/m2', ucum: 'kg/m2' },
  phq9: {
    code: '44249-1',
    display: 'PHQ-9 quick depression assessment panel',
    unit: '{score}',
    ucum: '{score}',
  },
} as const;

export const vaccineCodes = {
  influenzaPreservativeFree: { code: '140', display: 'Influenza, seasonal, injectable, preservative free' },
  influenza: { code: '141', display: 'Influenza, seasonal, injectable' },
  pneumococcalPolysaccharide: { code: '33', display: 'pneumococcal polysaccharide vaccine, 23 valent' },
  pneumococcalConjugate13: { code: '133', display: 'Pneumococcal conjugate PCV 13' },
  pneumococcalConjugate15: { code: '215', display: 'Pneumococcal conjugate PCV 15' },
  tdap: { code: '115', display: 'Tdap' },
} as const;

export const procedureCodes = {
  colonoscopy: { code: '73761001', display: 'Colonoscopy' },
  depressionScreening: { code: '171207006', display: 'Depression screening' },
} as const;

export const encounterTypes = [
  { code: '185349003', display: 'Encounter for check up', noteLabel: 'a routine check-up' },
  { code: '390906007', display: 'Follow-up encounter', noteLabel: 'a follow-up visit' },
  { code: '185345009', display: 'Encounter for symptom', noteLabel: 'a same-day visit' },
] as const;

export const allergyCodes = [
  { code: '764146007', display: 'Penicillin', category: 'medication', reaction: 'Hives' },
  { code: '387406002', display: 'Sulfonamide', category: 'medication', reaction: 'Rash' },
  { code: '256349002', display: 'Peanut', category: 'food', reaction: 'Anaphylaxis' },
  { code: '111088007', display: 'Latex', category: 'environment', reaction: 'Contact dermatitis' },
  { code: '387207008', display: 'Ibuprofen', category: 'medication', reaction: 'Dyspepsia' },
] as const;

export const noKnownAllergy = { code: '716186003', display: 'No known allergy' } as const;

export const progressNoteType = { code: '11506-3', display: 'Progress note' } as const;
