import type { MemoryRepository } from '@medplum/fhir-router';
import type { Binary, Condition, DocumentReference, Encounter, Observation, Patient } from 'fhir/r4.js';
import type { DraftContent } from '../../fhir/draft-note.ts';

/** A small two-patient chart for the fhir/ tests, written straight into the in-memory repository. */
export interface SeededChart {
  patient: Patient;
  otherPatient: Patient;
  encounter: Encounter;
  conditions: Condition[];
  observation: Observation;
  /** A note in ISO-8859-1, inline. */
  latinNote: DocumentReference;
  /** A note whose text is a Binary behind attachment.url. */
  binaryNote: DocumentReference;
}

/** Medplum's resource types are its own; the tests speak @types/fhir. */
export async function create<T>(repository: MemoryRepository, resource: T): Promise<T> {
  return (await repository.createResource(resource as never)) as unknown as T;
}

export const latinText = 'Patiënt meldt café-bezoek; geen klachten.';

export async function seedChart(repository: MemoryRepository): Promise<SeededChart> {
  const patient = await create<Patient>(repository, {
    resourceType: 'Patient',
    gender: 'female',
    birthDate: '1960-02-03',
  });
  const otherPatient = await create<Patient>(repository, { resourceType: 'Patient', gender: 'male' });
  const subject = { reference: `Patient/${patient.id}` };
  const encounter = await create<Encounter>(repository, {
    resourceType: 'Encounter',
    status: 'finished',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject,
    period: { start: '2026-11-01T09:00:00Z', end: '2026-11-01T09:30:00Z' },
    participant: [{ individual: { display: 'Dr. Example' } }],
  });
  const conditions = [
    await create<Condition>(repository, {
      resourceType: 'Condition',
      subject,
      code: { text: 'Type 2 diabetes mellitus' },
      clinicalStatus: { coding: [{ code: 'active' }] },
    }),
    await create<Condition>(repository, {
      resourceType: 'Condition',
      subject,
      code: { text: 'Hypertension' },
    }),
  ];
  await create<Condition>(repository, {
    resourceType: 'Condition',
    subject: { reference: `Patient/${otherPatient.id}` },
    code: { text: 'Another patient condition' },
  });
  const observation = await create<Observation>(repository, {
    resourceType: 'Observation',
    status: 'final',
    subject,
    code: { text: 'HbA1c' },
    valueQuantity: { value: 8.1, unit: '%' },
    effectiveDateTime: '2026-10-01',
  });
  const latinNote = await create<DocumentReference>(repository, {
    resourceType: 'DocumentReference',
    status: 'current',
    subject,
    date: '2026-10-02T10:00:00Z',
    type: { text: 'Progress note' },
    content: [
      {
        attachment: {
          contentType: 'text/plain; charset=ISO-8859-1',
          data: Buffer.from(latinText, 'latin1').toString('base64'),
        },
      },
    ],
  });
  const binary = await create<Binary>(repository, {
    resourceType: 'Binary',
    contentType: 'text/plain; charset=utf-8',
    data: Buffer.from('Follow-up: blood pressure 150/95, start lisinopril.', 'utf8').toString('base64'),
  });
  const binaryNote = await create<DocumentReference>(repository, {
    resourceType: 'DocumentReference',
    status: 'current',
    subject,
    date: '2026-10-15T10:00:00Z',
    type: { text: 'Follow-up note' },
    content: [{ attachment: { contentType: 'text/plain', url: `Binary/${binary.id}` } }],
  });
  return { patient, otherPatient, encounter, conditions, observation, latinNote, binaryNote };
}

export function draftContentFor(
  chart: SeededChart,
  engine = { id: 'medgemma', version: '1', model: 'MedGemma 27B' },
): DraftContent {
  const conditionReference = `Condition/${chart.conditions[0].id}`;
  const observationReference = `Observation/${chart.observation.id}`;
  return {
    kind: 'progress-summary',
    title: 'AI draft progress summary',
    text: `## Progress summary\n- Type 2 diabetes [${conditionReference}]\n- HbA1c 8.1% [${observationReference}]\n`,
    engine,
    prompt: { id: 'progress-summary', version: '3', rendered: 'Summarise the record.' },
    sources: new Map([
      [conditionReference, chart.conditions[0].meta?.versionId],
      [observationReference, chart.observation.meta?.versionId],
    ]),
    verification: { cited: 2, removed: 0, flagged: false },
    rules: [{ id: 'hba1c-overdue', version: '2' }],
  };
}
