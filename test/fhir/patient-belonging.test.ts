import type { FhirResource } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { citationScopeOf } from '../../agents/citation-verifier.ts';
import { assertInCompartment, barePatientId, belongsToPatient } from '../../fhir/patient-scope.ts';
import { isInPatientCompartment } from '../../src/http/citation-view.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';

/**
 * One rule for "belongs to this patient", asked by the event's compartment guard, the verifier and the
 * review app's citations alike: the Patient itself, else its subject, else its patient reference;
 * relative, absolute or versioned references; a subject naming something else is not overruled.
 */
const cases: [string, FhirResource, boolean][] = [
  ['the patient', { resourceType: 'Patient', id: 'p1' }, true],
  ['another patient', { resourceType: 'Patient', id: 'p2' }, false],
  [
    'a versioned subject',
    {
      resourceType: 'Observation',
      id: 'o1',
      status: 'final',
      code: {},
      subject: { reference: 'Patient/p1/_history/3' },
    },
    true,
  ],
  [
    'an absolute subject',
    { resourceType: 'Condition', id: 'c1', subject: { reference: 'https://ehr.example/fhir/Patient/p1' } },
    true,
  ],
  [
    'a patient element',
    { resourceType: 'AllergyIntolerance', id: 'a1', patient: { reference: 'Patient/p1' } },
    true,
  ],
  [
    'a subject naming a group, with the patient element pointing here',
    {
      resourceType: 'Observation',
      id: 'o2',
      status: 'final',
      code: {},
      subject: { reference: 'Group/g1' },
      ...({ patient: { reference: 'Patient/p1' } } as object),
    } as FhirResource,
    false,
  ],
  [
    'a longer id with the same start',
    { resourceType: 'Condition', id: 'c2', subject: { reference: 'Patient/p11' } },
    false,
  ],
  ['no patient at all', { resourceType: 'Organization', id: 'org' }, false],
];

describe('belongs to this patient: one rule everywhere', () => {
  for (const [name, resource, expected] of cases) {
    it(`${name}: ${expected ? 'belongs' : 'does not belong'}`, () => {
      expect(belongsToPatient(resource, 'p1')).toBe(expected);
      expect(belongsToPatient(resource, 'Patient/p1')).toBe(expected);
      // The review app's citation check and the compartment guard give the same answer.
      expect(isInPatientCompartment(resource, 'p1')).toBe(expected);
      if (expected) expect(() => assertInCompartment(resource, 'p1')).not.toThrow();
      else expect(() => assertInCompartment(resource, 'p1')).toThrow(/does not belong/);
    });
  }

  it('the verifier may cite a versioned-subject resource of this patient, and never the group-subject one', () => {
    const record = buildPatientRecord({ noteCount: 1 });
    const patientId = record.patient.id as string;
    record.observations.push(
      {
        ...(cases[2][1] as object),
        id: 'versioned',
        subject: { reference: `Patient/${patientId}/_history/3` },
      } as never,
      { ...(cases[5][1] as object), id: 'grouped', patient: { reference: `Patient/${patientId}` } } as never,
    );
    const scope = citationScopeOf(record, []);
    expect(scope.citable.has('Observation/versioned')).toBe(true);
    expect(scope.citable.has('Observation/grouped')).toBe(false);
  });

  it('reads the patient id from a bare id or any reference form', () => {
    expect(barePatientId('p1')).toBe('p1');
    expect(barePatientId('Patient/p1')).toBe('p1');
    expect(barePatientId('https://ehr.example/fhir/Patient/p1/_history/2')).toBe('p1');
  });
});
