import type {
  Condition,
  Encounter,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Patient,
  Procedure,
} from 'fhir/r4.js';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { recordFromResources } from './record-from-bundle.ts';

/**
 * A deterministic synthetic population for backtests and the benchmark when no sandbox is at hand:
 * patient N is always the same patient for the same seed, so any worker can build its share without
 * records crossing threads. Prevalences are rough adult primary-care figures, enough for every
 * starter rule to fire for some patients and not for others.
 */
const sct = 'http://snomed.info/sct';
const loinc = 'http://loinc.org';
const rxnorm = 'http://www.nlm.nih.gov/research/umls/rxnorm';
const cvx = 'http://hl7.org/fhir/sid/cvx';

export function generatedRecord(index: number, now: Date, seed = 1): PatientRecord {
  const random = mulberry32(seed * 1_000_003 + index);
  const chance = (probability: number) => random() < probability;
  const daysAgo = (days: number) => new Date(now.getTime() - days * 86_400_000).toISOString();
  const id = `gen-${seed}-${index}`;
  const subject = { reference: `Patient/${id}` };
  const ageYears = 20 + Math.floor(random() * 70);
  const birth = new Date(now.getTime() - (ageYears * 365.25 + random() * 300) * 86_400_000);
  const resources: FhirResource[] = [];
  const patient: Patient = {
    resourceType: 'Patient',
    id,
    gender: chance(0.5) ? 'female' : 'male',
    birthDate: birth.toISOString().slice(0, 10),
  };
  resources.push(patient);
  let counter = 0;
  const next = (type: string) => `${id}-${type}-${counter++}`;

  const visits = 2 + Math.floor(random() * 6);
  for (let visit = 0; visit < visits; visit++) {
    const when = daysAgo(30 + Math.floor(random() * 700));
    const encounter: Encounter = {
      resourceType: 'Encounter',
      id: next('enc'),
      status: 'finished',
      class: { code: 'AMB' },
      subject,
      period: { start: when, end: when },
    };
    resources.push(encounter);
    const hypertensive = ageYears > 45 && chance(0.35);
    const systolic = Math.round((hypertensive ? 135 : 115) + random() * 30);
    const diastolic = Math.round((hypertensive ? 84 : 70) + random() * 14);
    resources.push(bloodPressure(next('bp'), subject, when, systolic, diastolic));
    resources.push(
      quantity(next('hr'), subject, when, '8867-4', 'Heart rate', 55 + Math.round(random() * 40), '/min'),
    );
    resources.push(
      quantity(next('wt'), subject, when, '29463-7', 'Body weight', 50 + Math.round(random() * 60), 'kg'),
    );
  }
  resources.push({
    resourceType: 'Encounter',
    id: next('visit'),
    status: 'planned',
    class: { code: 'AMB' },
    subject,
    period: { start: daysAgo(-3) },
  } as Encounter);
  if (chance(0.02)) resources.push(bloodPressure(next('bp'), subject, daysAgo(3), 184, 122));

  const diabetic = ageYears > 30 && chance(0.14);
  if (diabetic) {
    resources.push(condition(next('dm'), subject, '44054006', 'Diabetes mellitus type 2', daysAgo(2000)));
    if (chance(0.6))
      resources.push(
        quantity(
          next('a1c'),
          subject,
          daysAgo(Math.floor(random() * 400)),
          '4548-4',
          'Hemoglobin A1c',
          6 + Math.round(random() * 40) / 10,
          '%',
        ),
      );
    if (chance(0.55))
      resources.push(medication(next('statin'), subject, '314231', 'Simvastatin 10 MG Oral Tablet'));
  }
  if (ageYears > 40 && chance(0.3)) {
    resources.push(condition(next('htn'), subject, '59621000', 'Essential hypertension', daysAgo(1500)));
    if (chance(0.6)) {
      resources.push(medication(next('acei'), subject, '314076', 'Lisinopril 10 MG Oral Tablet'));
      if (chance(0.6)) {
        const when = daysAgo(Math.floor(random() * 500));
        resources.push(
          quantity(
            next('k'),
            subject,
            when,
            '2823-3',
            'Potassium',
            3.6 + Math.round(random() * 15) / 10,
            'mmol/L',
          ),
        );
        resources.push(
          quantity(
            next('cr'),
            subject,
            when,
            '2160-0',
            'Creatinine',
            0.7 + Math.round(random() * 8) / 10,
            'mg/dL',
          ),
        );
      }
    }
  }
  if (chance(0.05))
    resources.push(medication(next('oxy'), subject, '1049621', 'Oxycodone Hydrochloride 5 MG Oral Tablet'));
  if (chance(0.06))
    resources.push(medication(next('benzo'), subject, '308047', 'Alprazolam 0.25 MG Oral Tablet'));
  if (chance(0.45))
    resources.push(
      immunization(
        next('flu'),
        subject,
        '140',
        'Influenza, seasonal, injectable, preservative free',
        daysAgo(Math.floor(random() * 500)),
      ),
    );
  if (ageYears >= 50 && chance(0.35))
    resources.push(
      immunization(
        next('pcv'),
        subject,
        '216',
        'Pneumococcal conjugate PCV20',
        daysAgo(Math.floor(random() * 2000)),
      ),
    );
  if (ageYears >= 45 && chance(0.5))
    resources.push(
      procedure(next('colo'), subject, '73761001', 'Colonoscopy', daysAgo(Math.floor(random() * 5000))),
    );
  if (chance(0.5))
    resources.push(
      procedure(
        next('phq'),
        subject,
        '715252007',
        'Depression screening using PHQ-9',
        daysAgo(Math.floor(random() * 700)),
      ),
    );
  return recordFromResources(resources);
}

function mulberry32(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 4294967296;
  };
}

function quantity(
  id: string,
  subject: { reference: string },
  when: string,
  code: string,
  display: string,
  value: number,
  unit: string,
): Observation {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { coding: [{ system: loinc, code, display }] },
    subject,
    effectiveDateTime: when,
    valueQuantity: { value, unit, system: 'http://unitsofmeasure.org', code: unit },
  };
}

function bloodPressure(
  id: string,
  subject: { reference: string },
  when: string,
  systolic: number,
  diastolic: number,
): Observation {
  const component = (code: string, display: string, value: number) => ({
    code: { coding: [{ system: loinc, code, display }] },
    valueQuantity: { value, unit: 'mm[Hg]', system: 'http://unitsofmeasure.org', code: 'mm[Hg]' },
  });
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { coding: [{ system: loinc, code: '85354-9', display: 'Blood pressure panel' }] },
    subject,
    effectiveDateTime: when,
    component: [
      component('8480-6', 'Systolic blood pressure', systolic),
      component('8462-4', 'Diastolic blood pressure', diastolic),
    ],
  };
}

function condition(
  id: string,
  subject: { reference: string },
  code: string,
  display: string,
  onset: string,
): Condition {
  return {
    resourceType: 'Condition',
    id,
    clinicalStatus: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }],
    },
    code: { coding: [{ system: sct, code, display }] },
    subject,
    onsetDateTime: onset,
  };
}

function medication(
  id: string,
  subject: { reference: string },
  code: string,
  display: string,
): MedicationRequest {
  return {
    resourceType: 'MedicationRequest',
    id,
    status: 'active',
    intent: 'order',
    medicationCodeableConcept: { coding: [{ system: rxnorm, code, display }] },
    subject,
  };
}

function immunization(
  id: string,
  subject: { reference: string },
  code: string,
  display: string,
  when: string,
): Immunization {
  return {
    resourceType: 'Immunization',
    id,
    status: 'completed',
    vaccineCode: { coding: [{ system: cvx, code, display }] },
    patient: subject,
    occurrenceDateTime: when,
  };
}

function procedure(
  id: string,
  subject: { reference: string },
  code: string,
  display: string,
  when: string,
): Procedure {
  return {
    resourceType: 'Procedure',
    id,
    status: 'completed',
    code: { coding: [{ system: sct, code, display }] },
    subject,
    performedDateTime: when,
  };
}

/** The backtest worker's population interface (see backtest.ts). */
export const populationRecord = generatedRecord;
