import type {
  Condition,
  DocumentReference,
  Encounter,
  MedicationRequest,
  Observation,
  Patient,
} from 'fhir/r4.js';
import type { ClinicalNote, PatientRecord } from '../../fhir/patient-record.ts';

/**
 * Builds PatientRecords in test code: one patient, a finished (or planned) encounter, a few active
 * problems and medications, observations and as many progress notes as a test needs (the large
 * patient has more than 300). Deterministic: the same options give the same record.
 */
export interface RecordOptions {
  patientId?: string;
  noteCount?: number;
  /** Characters of text per note. */
  noteLength?: number;
  encounterStatus?: Encounter['status'];
  /** Text to put into the newest note (for example a prompt injection). */
  newestNoteText?: string;
  observationCount?: number;
}

const problems = [
  ['44054006', 'Diabetes mellitus type 2'],
  ['38341003', 'Hypertension'],
  ['55822004', 'Hyperlipidemia'],
  ['195967001', 'Asthma'],
] as const;

const drugs = [
  ['860975', 'Metformin 500 MG Oral Tablet'],
  ['314076', 'Lisinopril 10 MG Oral Tablet'],
  ['617312', 'Atorvastatin 40 MG Oral Tablet'],
] as const;

const sentences = [
  'Patient reports good adherence to the current regimen and no new complaints.',
  'Blood pressure remains above goal on home readings; lifestyle measures discussed.',
  'HbA1c trending down since the last adjustment of metformin.',
  'No chest pain, dyspnea or palpitations reported at this visit.',
  'Plan: continue current medications, repeat labs in three months, follow up in clinic.',
  'Reviewed the diet log with the patient; counselled on sodium restriction.',
];

function noteText(index: number, length: number): string {
  let text = `Progress note ${index}. `;
  for (let sentence = index; text.length < length; sentence++)
    text += `${sentences[sentence % sentences.length]} `;
  return text.slice(0, length);
}

function isoDay(offsetDays: number): string {
  return new Date(Date.UTC(2025, 0, 1) + offsetDays * 86_400_000).toISOString();
}

export function buildPatientRecord(options: RecordOptions = {}): PatientRecord {
  const patientId = options.patientId ?? 'patient-1';
  const subject = { reference: `Patient/${patientId}` };
  const noteCount = options.noteCount ?? 6;
  const noteLength = options.noteLength ?? 1200;
  const patient: Patient = {
    resourceType: 'Patient',
    id: patientId,
    meta: { versionId: '1' },
    gender: 'female',
    birthDate: '1960-04-02',
  };
  const encounters: Encounter[] = Array.from(
    { length: Math.max(1, Math.min(noteCount, 40)) },
    (_, index) => ({
      resourceType: 'Encounter',
      id: `enc-${index + 1}`,
      meta: { versionId: '1' },
      status: 'finished',
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      type: [{ text: 'General examination' }],
      subject,
      period: { start: isoDay(index * 7), end: isoDay(index * 7) },
    }),
  );
  const encounter: Encounter = { ...encounters.at(-1)!, status: options.encounterStatus ?? 'finished' };
  encounters[encounters.length - 1] = encounter;
  const conditions: Condition[] = problems.map(([code, display], index) => ({
    resourceType: 'Condition',
    id: `cond-${index + 1}`,
    meta: { versionId: '1' },
    clinicalStatus: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
          code: index === 3 ? 'resolved' : 'active',
        },
      ],
    },
    code: { coding: [{ system: 'http://snomed.info/sct', code, display }], text: display },
    subject,
    onsetDateTime: isoDay(-400 + index * 30),
  }));
  const medications: MedicationRequest[] = drugs.map(([code, display], index) => ({
    resourceType: 'MedicationRequest',
    id: `med-${index + 1}`,
    meta: { versionId: '1' },
    status: 'active',
    intent: 'order',
    medicationCodeableConcept: {
      coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code, display }],
      text: display,
    },
    subject,
    authoredOn: isoDay(-300 + index * 20),
  }));
  const observations: Observation[] = Array.from({ length: options.observationCount ?? 12 }, (_, index) => ({
    resourceType: 'Observation',
    id: `obs-${index + 1}`,
    meta: { versionId: '1' },
    status: 'final',
    code: {
      coding: [
        {
          system: 'http://loinc.org',
          code: index % 2 ? '4548-4' : '8480-6',
          display: index % 2 ? 'Hemoglobin A1c' : 'Systolic blood pressure',
        },
      ],
    },
    subject,
    effectiveDateTime: isoDay(index * 10),
    valueQuantity:
      index % 2 ? { value: 7 + (index % 5) / 10, unit: '%' } : { value: 130 + index, unit: 'mm[Hg]' },
  }));
  const noteResources: DocumentReference[] = [];
  const notes: ClinicalNote[] = [];
  for (let index = 0; index < noteCount; index++) {
    const id = `note-${index + 1}`;
    const encounterIndex = Math.min(index, encounters.length - 1);
    const date = isoDay(Math.floor((index * encounters.length * 7) / Math.max(1, noteCount)));
    const text =
      index === noteCount - 1 && options.newestNoteText
        ? options.newestNoteText
        : noteText(index + 1, noteLength);
    noteResources.push({
      resourceType: 'DocumentReference',
      id,
      meta: { versionId: '1' },
      status: 'current',
      type: { coding: [{ system: 'http://loinc.org', code: '11506-3', display: 'Progress note' }] },
      subject,
      date,
      context: {
        encounter: [
          {
            reference: `Encounter/${encounters[encounterIndex === encounters.length - 1 ? encounterIndex : encounterIndex].id}`,
          },
        ],
      },
      content: [{ attachment: { contentType: 'text/plain', data: Buffer.from(text).toString('base64') } }],
    });
    notes.push({
      reference: `DocumentReference/${id}`,
      id,
      versionId: '1',
      date,
      title: `Progress note ${index + 1}`,
      text,
    });
  }
  return {
    patient,
    encounter,
    conditions,
    medications,
    allergies: [
      {
        resourceType: 'AllergyIntolerance',
        id: 'allergy-1',
        meta: { versionId: '1' },
        patient: subject,
        code: { text: 'Penicillin' },
        criticality: 'high',
        clinicalStatus: {
          coding: [
            { system: 'http://terminology.hl7.org/CodeSystem/allergyintolerance-clinical', code: 'active' },
          ],
        },
      },
    ],
    observations,
    encounters,
    procedures: [],
    immunizations: [],
    noteResources,
    notes,
  };
}
