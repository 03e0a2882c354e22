import type {
  Binary,
  DocumentReference,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Patient,
  Procedure,
} from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { medicationCodes } from '../../src/sandbox/clinical-codes.ts';
import {
  type RuleSituation,
  ruleSituations,
  sandboxPatientProfiles,
  sandboxProfileByKey,
} from '../../src/sandbox/patient-profiles.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';

const now = new Date('2026-11-27T00:00:00Z');
const dayMs = 86_400_000;

function ofType<T extends FhirResource>(resources: FhirResource[], type: T['resourceType']): T[] {
  return resources.filter((resource) => resource.resourceType === type) as T[];
}

function noteText(note: DocumentReference, resources: FhirResource[]): string {
  const attachment = note.content[0].attachment;
  if (attachment.data) return Buffer.from(attachment.data, 'base64').toString('utf8');
  const binaryId = attachment.url?.replace(/^Binary\//, '');
  const binary = ofType<Binary>(resources, 'Binary').find((candidate) => candidate.id === binaryId);
  if (!binary?.data) throw new Error(`note ${note.id} points to a missing Binary ${attachment.url}`);
  return Buffer.from(binary.data, 'base64').toString('utf8');
}

/** The rule situations read from the data alone, independently of the generator's plan. */
function situationsFromData(resources: FhirResource[]): Record<RuleSituation, boolean> {
  const patient = ofType<Patient>(resources, 'Patient')[0];
  const birth = new Date(`${patient.birthDate}T00:00:00Z`);
  let age = now.getUTCFullYear() - birth.getUTCFullYear();
  if (
    now.getUTCMonth() < birth.getUTCMonth() ||
    (now.getUTCMonth() === birth.getUTCMonth() && now.getUTCDate() < birth.getUTCDate())
  )
    age--;
  const within = (iso: string | undefined, days: number) =>
    iso !== undefined && now.getTime() - Date.parse(iso) <= days * dayMs;
  const activeConditionCodes = resources
    .filter((resource) => resource.resourceType === 'Condition')
    .filter((condition) => condition.clinicalStatus?.coding?.[0].code === 'active')
    .map((condition) => condition.code?.coding?.[0].code);
  const activeClasses = ofType<MedicationRequest>(resources, 'MedicationRequest')
    .filter((request) => request.status === 'active')
    .map((request) => {
      const code = request.medicationCodeableConcept?.coding?.[0].code;
      return Object.values(medicationCodes).find((medication) => medication.code === code)?.medicationClass;
    });
  const observations = ofType<Observation>(resources, 'Observation');
  const observed = (loinc: string, days: number) =>
    observations.some(
      (observation) =>
        observation.code.coding?.[0].code === loinc && within(observation.effectiveDateTime, days),
    );
  const pressures = observations
    .filter((observation) => observation.code.coding?.[0].code === '85354-9')
    .sort((left, right) => Date.parse(right.effectiveDateTime!) - Date.parse(left.effectiveDateTime!))
    .slice(0, 2)
    .map((observation) => {
      const value = (code: string) =>
        observation.component?.find((component) => component.code.coding?.[0].code === code)?.valueQuantity
          ?.value ?? 0;
      return value('8480-6') >= 140 || value('8462-4') >= 90;
    });
  const immunizations = ofType<Immunization>(resources, 'Immunization');
  const vaccinated = (codes: string[], days: number) =>
    immunizations.some(
      (immunization) =>
        codes.includes(immunization.vaccineCode.coding?.[0].code ?? '') &&
        within(immunization.occurrenceDateTime, days),
    );
  const diabetic = activeConditionCodes.includes('44054006');
  const colonoscopy = ofType<Procedure>(resources, 'Procedure').some(
    (procedure) =>
      procedure.code?.coding?.[0].code === '73761001' && within(procedure.performedDateTime, 3652),
  );
  return {
    'hba1c-overdue': diabetic && !observed('4548-4', 183),
    'diabetes-statin-missing': diabetic && age >= 40 && age <= 75 && !activeClasses.includes('statin'),
    'blood-pressure-above-target': pressures.length === 2 && pressures.every(Boolean),
    'colorectal-screening-due': age >= 45 && age <= 75 && !colonoscopy,
    'influenza-vaccine-due': !vaccinated(['140', '141'], 365),
    'pneumococcal-vaccine-due': age >= 65 && !vaccinated(['33', '133', '215'], 100_000),
    'opioid-benzodiazepine': activeClasses.includes('opioid') && activeClasses.includes('benzodiazepine'),
    'ace-arb-monitoring-due':
      (activeClasses.includes('ace-inhibitor') || activeClasses.includes('arb')) &&
      !(observed('2823-3', 365) && observed('2160-0', 365)),
    'depression-screening-due': !observed('44249-1', 365),
  };
}

describe('synthetic patient generator', () => {
  const patients = generatePatients({ count: 12, seed: 20261127, now });

  it('is deterministic for a seed and differs across seeds', () => {
    const again = generatePatients({ count: 12, seed: 20261127, now });
    expect(JSON.stringify(again)).toBe(JSON.stringify(patients));
    const other = generatePatients({ count: 12, seed: 7, now });
    expect(JSON.stringify(other)).not.toBe(JSON.stringify(patients));
    // Patient N does not depend on how many patients were generated.
    expect(JSON.stringify(generatePatients({ count: 3, seed: 20261127, now })[2])).toBe(
      JSON.stringify(patients[2]),
    );
  });

  it('keeps ids prefixed per patient and every reference inside the patient', () => {
    for (const patient of patients) {
      const ids = new Set(patient.resources.map((resource) => `${resource.resourceType}/${resource.id}`));
      expect(ids.size).toBe(patient.resources.length);
      for (const resource of patient.resources) expect(resource.id?.startsWith(patient.patientId)).toBe(true);
      const references = JSON.stringify(patient.resources).match(/"reference":"[^"]+"/g) ?? [];
      expect(references.length).toBeGreaterThan(0);
      for (const match of references) expect(ids.has(match.slice(13, -1))).toBe(true);
      const binaryUrls = ofType<DocumentReference>(patient.resources, 'DocumentReference')
        .map((note) => note.content[0].attachment.url)
        .filter(Boolean);
      for (const url of binaryUrls) expect(ids.has(url as string)).toBe(true);
    }
  });

  it('gives the long-history patient more than 300 sectioned, decodable progress notes', () => {
    const profile = sandboxProfileByKey('long-history');
    const patient = patients[profile.index];
    const notes = ofType<DocumentReference>(patient.resources, 'DocumentReference');
    expect(notes.length).toBeGreaterThan(300);
    const viaBinary = notes.filter((note) => note.content[0].attachment.url);
    expect(viaBinary.length).toBeGreaterThan(10);
    expect(viaBinary.length).toBeLessThan(notes.length);
    const styles = new Set<string>();
    for (const note of notes) {
      expect(note).toMatchObject({
        status: 'current',
        docStatus: 'final',
        type: { coding: [{ system: 'http://loinc.org', code: '11506-3' }] },
        subject: { reference: `Patient/${patient.patientId}` },
        content: [{ attachment: { contentType: 'text/plain; charset=utf-8' } }],
      });
      expect(note.context?.encounter?.[0].reference).toMatch(/^Encounter\/sbx-0000-enc-\d+$/);
      const text = noteText(note, patient.resources);
      expect(text).toMatch(/(Subjective:|SUBJECTIVE:|S: )/);
      expect(text).toMatch(/(Assessment:|ASSESSMENT:|A\/P:)/);
      expect(text).toMatch(/(Plan:|PLAN:|A\/P:)/);
      styles.add(text.match(/SUBJECTIVE:|Subjective:|S: |TELEPHONE/)?.[0] ?? 'none');
    }
    expect(styles).toEqual(new Set(['SUBJECTIVE:', 'Subjective:', 'S: ', 'TELEPHONE']));
    // Notes speak of the patient's own numbers: the latest visit's blood pressure appears in its note.
    const latest = notes.filter((note) => !noteText(note, patient.resources).startsWith('TELEPHONE')).at(-1)!;
    const encounterId = latest.context?.encounter?.[0].reference?.split('/')[1];
    const pressure = ofType<Observation>(patient.resources, 'Observation').find(
      (observation) =>
        observation.encounter?.reference === `Encounter/${encounterId}` && observation.component,
    )!;
    const systolic = pressure.component?.[0].valueQuantity?.value;
    const diastolic = pressure.component?.[1].valueQuantity?.value;
    expect(noteText(latest, patient.resources)).toContain(`BP ${systolic}/${diastolic}`);
  });

  it('has planned future encounters, resolved and active conditions, allergies and immunizations', () => {
    const all = patients.flatMap((patient) => patient.resources);
    const planned = all.filter(
      (resource) => resource.resourceType === 'Encounter' && resource.status === 'planned',
    );
    expect(planned.length).toBe(sandboxPatientProfiles.filter((profile) => profile.hasPlannedVisit).length);
    for (const encounter of planned)
      expect(Date.parse((encounter as { period: { start: string } }).period.start)).toBeGreaterThan(
        now.getTime(),
      );
    const clinicalStatuses = new Set(
      all
        .filter((resource) => resource.resourceType === 'Condition')
        .map((condition) => condition.clinicalStatus?.coding?.[0].code),
    );
    expect(clinicalStatuses).toEqual(new Set(['active', 'resolved']));
    expect(all.some((resource) => resource.resourceType === 'AllergyIntolerance')).toBe(true);
    expect(all.some((resource) => resource.resourceType === 'Procedure')).toBe(true);
  });

  it('matches the catalogue: every scenario situation holds in the data, and each fires for some and not others', () => {
    for (const profile of sandboxPatientProfiles) {
      expect(situationsFromData(patients[profile.index].resources), profile.key).toEqual(profile.situations);
    }
    for (const situation of ruleSituations) {
      const values = sandboxPatientProfiles.map((profile) => profile.situations[situation]);
      expect(values, situation).toContain(true);
      expect(values, situation).toContain(false);
    }
  });

  it('keeps random patients consistent with their profiles too, and bulk generation light', () => {
    const population = generatePatients({ count: 300, seed: 99, now, maxNotesPerPatient: 2 });
    for (const patient of population.slice(12)) {
      expect(situationsFromData(patient.resources), patient.profile.key).toEqual(patient.profile.situations);
      expect(ofType<DocumentReference>(patient.resources, 'DocumentReference').length).toBeLessThanOrEqual(2);
    }
    const firing = Object.fromEntries(
      ruleSituations.map((situation) => [
        situation,
        population.filter((patient) => patient.profile.situations[situation]).length,
      ]),
    );
    for (const situation of ruleSituations) expect(firing[situation], situation).toBeGreaterThan(0);
    const withoutNotes = generatePatients({ count: 20, seed: 99, now, notesPerEncounter: 0 });
    expect(
      withoutNotes
        .flatMap((patient) => patient.resources)
        .some((resource) => resource.resourceType === 'DocumentReference'),
    ).toBe(false);
  });
});
