import type {
  Condition,
  Encounter,
  FhirResource,
  Medication,
  MedicationRequest,
  Observation,
  Patient,
  ServiceRequest,
} from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { citationScopeOf, verifyCitations } from '../../agents/citation-verifier.ts';
import { encounterAfterDeath, isDeceased } from '../../fhir/patient-death.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { fhirDateRange, recordAsOfVisit, visitCutoff } from '../../fhir/record-as-of-visit.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';

/**
 * The record as of the visit (issue 19, items 2 and 6): a record built with the test builder, its
 * encounter moved to an early visit, cut to what existed by the end of it.
 */
const now = new Date('2026-12-07T04:00:00Z');
const subject = { reference: 'Patient/patient-1' };

/** The builder's record with its encounter set to the second visit (2025-01-08), the later history still in it. */
function earlyVisitRecord(): PatientRecord {
  const record = buildPatientRecord({ noteCount: 6, observationCount: 12 });
  const early = record.encounters[1];
  return {
    ...record,
    encounter: { ...early, period: { start: '2025-01-08T09:00:00Z', end: '2025-01-08T10:00:00Z' } },
  };
}

const ids = (resources: readonly FhirResource[]) => resources.map((resource) => resource.id);

describe('visitCutoff', () => {
  const encounter = (fields: Partial<Encounter>): Encounter => ({
    resourceType: 'Encounter',
    status: 'finished',
    class: { code: 'AMB' },
    ...fields,
  });

  it('is the end of the encounter when it has one', () => {
    expect(
      visitCutoff(
        encounter({ period: { start: '1987-07-18T23:58:16-04:00', end: '1987-07-19T00:50:10-04:00' } }),
        now,
      ),
    ).toEqual(new Date('1987-07-19T04:50:10Z'));
  });

  it('is the end of the start day in the encounter’s own time zone when it has no end', () => {
    expect(visitCutoff(encounter({ period: { start: '1987-07-18T23:58:16-04:00' } }), now)).toEqual(
      new Date('1987-07-19T03:59:59.999Z'),
    );
  });

  it('is now for a visit still to come, and for an encounter without a period', () => {
    const planned = encounter({ status: 'planned', period: { start: '2027-01-10T09:00:00Z' } });
    expect(visitCutoff(planned, now)).toEqual(now);
    expect(
      visitCutoff(encounter({ status: 'arrived', period: { start: '2020-01-01T09:00:00Z' } }), now),
    ).toEqual(now);
    expect(visitCutoff(encounter({}), now)).toEqual(now);
  });

  it('is never later than now', () => {
    expect(
      visitCutoff(encounter({ period: { start: '2026-12-07T01:00:00Z', end: '2026-12-09T00:00:00Z' } }), now),
    ).toEqual(now);
  });
});

describe('fhirDateRange', () => {
  it('reads FHIR dates at their own precision, in the given zone when they carry none', () => {
    expect(fhirDateRange('1987')).toEqual({
      start: Date.parse('1987-01-01T00:00:00Z'),
      end: Date.parse('1987-12-31T23:59:59.999Z'),
    });
    expect(fhirDateRange('1987-02', -240)?.start).toBe(Date.parse('1987-02-01T04:00:00Z'));
    expect(fhirDateRange('1987-02-28')?.end).toBe(Date.parse('1987-02-28T23:59:59.999Z'));
    expect(fhirDateRange('1987-07-19T00:50:10.5-04:00')?.start).toBe(Date.parse('1987-07-19T04:50:10.500Z'));
  });

  it('treats what is not a FHIR date as no date', () => {
    for (const value of ['', 'yesterday', '1987-13-01', '1987-07-19T25:00:00Z', '19870719', undefined])
      expect(fhirDateRange(value), String(value)).toBeUndefined();
  });
});

describe('recordAsOfVisit', () => {
  it('leaves out encounters, results and notes dated after the visit, and says when it was cut', () => {
    const record = earlyVisitRecord();
    const cut = recordAsOfVisit(record, now);

    expect(cut.asOf).toBe('2025-01-08T10:00:00.000Z');
    expect(ids(cut.encounters)).toEqual(['enc-1', 'enc-2']);
    // Observations every 10 days from 2025-01-01: only the first was taken by then.
    expect(ids(cut.observations)).toEqual(['obs-1']);
    // Notes fall on 2025-01-01, 01-08, 01-15...: two by the end of the visit, text and resource alike.
    expect(ids(cut.noteResources)).toEqual(['note-1', 'note-2']);
    expect(cut.notes.map((note) => note.id)).toEqual(['note-1', 'note-2']);
    // Problems, orders and the undated allergy were there before the visit.
    expect(ids(cut.conditions)).toEqual(ids(record.conditions));
    expect(ids(cut.medications)).toEqual(ids(record.medications));
    expect(ids(cut.allergies)).toEqual(['allergy-1']);
    // The input is a copy's source, not changed.
    expect(record.observations).toHaveLength(12);
    expect(record.asOf).toBeUndefined();
  });

  it('keeps the visit’s own encounter even when it starts after now (a planned visit)', () => {
    const record = buildPatientRecord({ encounterStatus: 'planned' });
    const planned: Encounter = { ...record.encounter, period: { start: '2027-03-01T09:00:00Z' } };
    const cut = recordAsOfVisit(
      {
        ...record,
        encounter: planned,
        encounters: [...record.encounters, { ...planned, id: 'enc-later', status: 'planned' }],
      },
      now,
    );
    expect(cut.asOf).toBe(now.toISOString());
    expect(ids(cut.encounters)).toContain(planned.id);
    expect(ids(cut.encounters)).not.toContain('enc-later');
  });

  it('makes a resource cut out of the record impossible to cite', () => {
    const record = earlyVisitRecord();
    const text = [
      '## Progress summary',
      '- Systolic blood pressure 130 mmHg [Observation/obs-1]',
      '- Hemoglobin A1c 7.4 % [Observation/obs-4]',
    ].join('\n');
    const headings = ['## Progress summary'];
    expect(verifyCitations(text, citationScopeOf(record, headings)).cited).toContain('Observation/obs-4');
    const verification = verifyCitations(text, citationScopeOf(recordAsOfVisit(record, now), headings));
    expect(verification.cited).toEqual(['Observation/obs-1']);
    expect(verification.text).not.toContain('obs-4');
  });

  it('presents a condition that abated after the visit as active then, and one abated before as it was', () => {
    const record = earlyVisitRecord();
    const resolved = (id: string, abatementDateTime: string): Condition => ({
      resourceType: 'Condition',
      id,
      subject,
      clinicalStatus: {
        coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'resolved' }],
      },
      code: { text: 'Acute bronchitis' },
      onsetDateTime: '2024-12-20T10:00:00Z',
      abatementDateTime,
    });
    const later = resolved('cond-later', '2025-02-01T00:00:00Z');
    const before = resolved('cond-before', '2025-01-05T00:00:00Z');
    const recordedLater: Condition = {
      ...resolved('cond-recorded-later', '2025-03-01'),
      recordedDate: '2025-01-20',
    };
    const cut = recordAsOfVisit({ ...record, conditions: [later, before, recordedLater] }, now);

    const [activeThen, stillResolved] = cut.conditions;
    expect(ids(cut.conditions)).toEqual(['cond-later', 'cond-before']);
    expect(activeThen.abatementDateTime).toBeUndefined();
    expect(activeThen.clinicalStatus?.coding?.[0].code).toBe('active');
    expect(stillResolved).toBe(before);
    expect(later.abatementDateTime).toBe('2025-02-01T00:00:00Z');
  });

  it('dates conditions, orders, procedures, immunizations and allergies by when they were made or known', () => {
    const record = earlyVisitRecord();
    const diagnosedLater: Condition = {
      resourceType: 'Condition',
      id: 'cond-diagnosed-later',
      subject,
      code: { text: 'Chronic kidney disease' },
      onsetDateTime: '2025-03-10',
    };
    const orderedLater: MedicationRequest = {
      resourceType: 'MedicationRequest',
      id: 'med-later',
      status: 'active',
      intent: 'order',
      subject,
      medicationCodeableConcept: { text: 'Insulin glargine' },
      authoredOn: '2025-01-09T08:00:00Z',
    };
    const stoppedLater: MedicationRequest = {
      resourceType: 'MedicationRequest',
      id: 'med-stopped-later',
      status: 'stopped',
      intent: 'order',
      subject,
      medicationCodeableConcept: { text: 'Amoxicillin' },
      authoredOn: '2025-01-02T08:00:00Z',
      dispenseRequest: { validityPeriod: { start: '2025-01-02', end: '2025-01-20' } },
    };
    const stoppedBefore: MedicationRequest = {
      ...stoppedLater,
      id: 'med-stopped-before',
      dispenseRequest: { validityPeriod: { start: '2025-01-02', end: '2025-01-05' } },
    };
    const cut = recordAsOfVisit(
      {
        ...record,
        conditions: [...record.conditions, diagnosedLater],
        medications: [orderedLater, stoppedLater, stoppedBefore],
        procedures: [
          {
            resourceType: 'Procedure',
            id: 'proc-before',
            status: 'completed',
            subject,
            performedPeriod: { start: '2025-01-08T09:30:00Z', end: '2025-01-09T00:00:00Z' },
          },
          {
            resourceType: 'Procedure',
            id: 'proc-later',
            status: 'completed',
            subject,
            performedDateTime: '2025-01-08T11:00:00Z',
          },
        ],
        immunizations: [
          {
            resourceType: 'Immunization',
            id: 'imm-before',
            status: 'completed',
            patient: subject,
            vaccineCode: { text: 'Influenza' },
            occurrenceDateTime: '2024-10-01',
          },
          // Given long ago, entered into the chart only after the visit: not known at it.
          {
            resourceType: 'Immunization',
            id: 'imm-recorded-later',
            status: 'completed',
            patient: subject,
            vaccineCode: { text: 'Tetanus' },
            occurrenceDateTime: '2010-05-01',
            recorded: '2025-02-01',
          },
          {
            resourceType: 'Immunization',
            id: 'imm-undated',
            status: 'completed',
            patient: subject,
            vaccineCode: { text: 'Hepatitis B' },
            occurrenceString: 'in childhood',
          },
        ],
        allergies: [
          ...record.allergies,
          {
            resourceType: 'AllergyIntolerance',
            id: 'allergy-later',
            patient: subject,
            code: { text: 'Latex' },
            recordedDate: '2025-06-01',
          },
        ],
      },
      now,
    );
    expect(ids(cut.conditions)).not.toContain('cond-diagnosed-later');
    expect(ids(cut.medications)).toEqual(['med-stopped-later', 'med-stopped-before']);
    expect(cut.medications[0].status).toBe('active');
    expect(cut.medications[1].status).toBe('stopped');
    expect(ids(cut.procedures)).toEqual(['proc-before']);
    expect(ids(cut.immunizations)).toEqual(['imm-before', 'imm-undated']);
    expect(ids(cut.allergies)).toEqual(['allergy-1']);
  });

  it('counts a result from when it was available: taken before the visit but issued after is left out', () => {
    const record = earlyVisitRecord();
    const result = (id: string, fields: Partial<Observation>): Observation => ({
      resourceType: 'Observation',
      id,
      status: 'final',
      code: { text: 'Creatinine' },
      subject,
      ...fields,
    });
    const cut = recordAsOfVisit(
      {
        ...record,
        observations: [
          result('drawn-and-issued', {
            effectiveDateTime: '2025-01-08T09:10:00Z',
            issued: '2025-01-08T09:50:00Z',
          }),
          result('issued-later', {
            effectiveDateTime: '2025-01-08T09:10:00Z',
            issued: '2025-01-10T08:00:00Z',
          }),
          result('period-later', { effectivePeriod: { start: '2025-01-09T00:00:00Z' } }),
          // The visit's own day, at day precision: it may have been before the end of the visit.
          result('same-day', { effectiveDateTime: '2025-01-08' }),
          result('next-month', { effectiveDateTime: '2025-02' }),
          result('undated', {}),
          result('unreadable-date', { effectiveDateTime: 'last Tuesday' }),
        ],
      },
      now,
    );
    expect(ids(cut.observations)).toEqual(['drawn-and-issued', 'same-day', 'undated', 'unreadable-date']);
  });

  it('cuts the further types by their own date elements, keeping undated ones', () => {
    const record = earlyVisitRecord();
    const medication: Medication = {
      resourceType: 'Medication',
      id: 'medication-1',
      code: { text: 'Metformin' },
    };
    const orderedBefore: ServiceRequest = {
      resourceType: 'ServiceRequest',
      id: 'colonoscopy-ordered',
      status: 'active',
      intent: 'order',
      subject,
      authoredOn: '2025-01-08T09:45:00Z',
      occurrenceDateTime: '2025-03-01',
    };
    const orderedLater: ServiceRequest = {
      ...orderedBefore,
      id: 'colonoscopy-later',
      authoredOn: '2025-01-20',
    };
    const cut = recordAsOfVisit(
      {
        ...record,
        additional: [
          medication,
          orderedBefore,
          orderedLater,
          {
            resourceType: 'DiagnosticReport',
            id: 'report-later',
            status: 'final',
            code: { text: 'CBC' },
            subject,
            issued: '2025-01-09T00:00:00Z',
          },
          {
            resourceType: 'Specimen',
            id: 'specimen-later',
            subject,
            collection: { collectedDateTime: '2025-01-12' },
          },
          {
            resourceType: 'CarePlan',
            id: 'plan-running',
            status: 'active',
            intent: 'plan',
            subject,
            period: { start: '2024-06-01', end: '2025-06-01' },
          },
        ],
      },
      now,
    );
    expect(ids(cut.additional ?? [])).toEqual(['medication-1', 'colonoscopy-ordered', 'plan-running']);
  });

  it('keeps what belongs to the visit itself whatever its date: its note signed later, its coded diagnoses, its late results', () => {
    const record = earlyVisitRecord();
    const visit = `Encounter/${record.encounter.id}`;
    const encounter: Encounter = {
      ...record.encounter,
      diagnosis: [{ condition: { reference: 'Condition/coded-at-discharge' } }],
    };
    const later = '2025-01-11T08:00:00Z';
    const condition = (id: string, fields: Partial<Condition>): Condition => ({
      resourceType: 'Condition',
      id,
      subject,
      code: { text: 'Acute bronchitis' },
      recordedDate: later,
      ...fields,
    });
    const cut = recordAsOfVisit(
      {
        ...record,
        encounter,
        conditions: [
          condition('coded-at-discharge', {}),
          condition('names-the-visit', {
            encounter: { reference: `https://ehr.example.org/fhir/${visit}/_history/2` },
          }),
          condition('another-visit', { encounter: { reference: 'Encounter/enc-5' } }),
          // An id that only starts like the visit's is another encounter.
          condition('similar-id', { encounter: { reference: `${visit}0` } }),
        ],
        observations: [
          {
            resourceType: 'Observation',
            id: 'culture',
            status: 'final',
            code: { text: 'Sputum culture' },
            subject,
            encounter: { reference: visit },
            effectiveDateTime: '2025-01-08T09:20:00Z',
            issued: later,
          },
        ],
        noteResources: record.noteResources.map((document) =>
          document.id === 'note-4'
            ? { ...document, context: { encounter: [{ reference: visit }] } }
            : document,
        ),
      },
      now,
    );
    expect(ids(cut.conditions)).toEqual(['coded-at-discharge', 'names-the-visit']);
    expect(ids(cut.observations)).toEqual(['culture']);
    expect(ids(cut.noteResources)).toEqual(['note-1', 'note-2', 'note-4']);
    expect(cut.notes.map((note) => note.id)).toEqual(['note-1', 'note-2', 'note-4']);
  });

  it('drops notes whose resource is gone, and omissions of notes that are gone', () => {
    const record = earlyVisitRecord();
    const cut = recordAsOfVisit(
      {
        ...record,
        omitted: [
          { reference: 'DocumentReference/note-1', reason: 'too-large' },
          { reference: 'DocumentReference/note-5', reason: 'too-large' },
        ],
      },
      now,
    );
    expect(cut.omitted).toEqual([{ reference: 'DocumentReference/note-1', reason: 'too-large' }]);
  });

  it('does not know a death after the visit, and keeps one before it', () => {
    const record = earlyVisitRecord();
    const diedLater: Patient = { ...record.patient, deceasedDateTime: '2025-05-09T20:35:22-04:00' };
    const cut = recordAsOfVisit({ ...record, patient: diedLater }, now);
    expect(cut.patient.deceasedDateTime).toBeUndefined();
    expect(isDeceased(cut.patient)).toBe(false);
    expect(diedLater.deceasedDateTime).toBe('2025-05-09T20:35:22-04:00');

    const diedBefore: Patient = { ...record.patient, deceasedDateTime: '2025-01-08T09:30:00Z' };
    expect(recordAsOfVisit({ ...record, patient: diedBefore }, now).patient.deceasedDateTime).toBe(
      '2025-01-08T09:30:00Z',
    );
  });
});

describe('deceased patients', () => {
  const patient: Patient = { resourceType: 'Patient', id: 'p' };
  const startingAt = (start?: string): Encounter => ({
    resourceType: 'Encounter',
    status: 'finished',
    class: { code: 'AMB' },
    ...(start ? { period: { start } } : {}),
  });

  it('a living patient has no encounter after death', () => {
    expect(isDeceased(patient)).toBe(false);
    expect(isDeceased({ ...patient, deceasedBoolean: false })).toBe(false);
    expect(encounterAfterDeath(patient, startingAt('2030-01-01'))).toBe(false);
  });

  it('an encounter starting after the death is after it; one before it, or on the day of a death dated to the day, is not', () => {
    const died = { ...patient, deceasedDateTime: '1989-05-09T20:35:22-04:00' };
    expect(encounterAfterDeath(died, startingAt('1989-05-13T23:58:16-04:00'))).toBe(true);
    expect(encounterAfterDeath(died, startingAt('1989-04-15T23:58:16-04:00'))).toBe(false);
    const diedThatDay = { ...patient, deceasedDateTime: '1989-05-09' };
    expect(encounterAfterDeath(diedThatDay, startingAt('1989-05-09T22:00:00Z'))).toBe(false);
    expect(encounterAfterDeath(diedThatDay, startingAt('1989-05-10T09:00:00Z'))).toBe(true);
  });

  it('without a usable death date or encounter start, no encounter is shown to precede the death', () => {
    expect(encounterAfterDeath({ ...patient, deceasedBoolean: true }, startingAt('1980-01-01'))).toBe(true);
    expect(encounterAfterDeath({ ...patient, deceasedDateTime: 'unknown' }, startingAt('1980-01-01'))).toBe(
      true,
    );
    expect(encounterAfterDeath({ ...patient, deceasedDateTime: '1989-05-09' }, startingAt())).toBe(true);
  });
});
