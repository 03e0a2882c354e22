import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { containsTerm, labelledFacts } from '../../src/eval/labelled-set.ts';
import { resourceTexts } from '../../src/eval/metrics.ts';
import { recordForDraft } from '../../src/eval/run-eval.ts';
import { type EvalSource, openSource } from '../../src/eval/sources.ts';
import { plantedStatements } from '../../src/sandbox/progress-notes.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';

/**
 * The labelled set must be true of the data: every planted statement is in the note the truth names,
 * every fact's source is in the record the service's retrieval read and says all the fact's terms, and
 * planting changes nothing else about a generated patient.
 */
let source: EvalSource;
const records: PatientRecord[] = [];

beforeAll(async () => {
  source = await openSource({ kind: 'sandbox', patients: 4, seed: 20261127 });
  for (const reference of source.cases) {
    const record = await recordForDraft(source.fhir, reference, {
      draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
    });
    if (record) records.push(record);
  }
}, 120_000);

afterAll(async () => {
  await source?.close();
});

describe('the labelled set', () => {
  it('plants each statement in the note the truth names, and nowhere else', () => {
    const patientsWithTruth = [...source.planted.values()].filter((truths) => truths.length === 2);
    expect(patientsWithTruth).toHaveLength(4);
    for (const record of records.filter((candidate) => candidate.encounter.status === 'finished')) {
      const truths = source.planted.get(record.patient.id as string) ?? [];
      for (const truth of truths) {
        const statement = plantedStatements.find(
          (candidate) => candidate.terms.join() === truth.terms.join(),
        );
        const holders = record.notes.filter((note) => note.text.includes(statement?.text as string));
        expect(holders.map((note) => note.reference)).toEqual([truth.note]);
      }
    }
  });

  it('takes every fact from a source in the record that says all its terms', () => {
    let checked = 0;
    for (const record of records) {
      const texts = resourceTexts(record);
      const facts = labelledFacts(record, [], source.planted.get(record.patient.id as string) ?? []);
      expect(facts.some((fact) => fact.category === 'problem')).toBe(true);
      expect(facts.some((fact) => fact.category === 'result')).toBe(true);
      for (const fact of facts) {
        const holder = fact.sources.find((reference) => texts.has(reference));
        expect(holder, `${fact.category} ${fact.sources.join()}`).toBeDefined();
        for (const term of fact.terms)
          expect(containsTerm(texts.get(holder as string) as string, term)).toBe(true);
        checked += 1;
      }
    }
    expect(checked).toBeGreaterThan(40);
  });

  it('asks for the latest key result with its value, unit and date', () => {
    const record = records[0];
    const results = labelledFacts(record, []).filter((fact) => fact.category === 'result');
    const hba1c = record.observations
      .filter((observation) => observation.code.coding?.some((coding) => coding.code === '4548-4'))
      .sort((left, right) => (right.effectiveDateTime ?? '').localeCompare(left.effectiveDateTime ?? ''))[0];
    const fact = results.find((candidate) => candidate.sources.includes(`Observation/${hba1c.id}`));
    expect(fact?.terms).toEqual([
      String(hba1c.valueQuantity?.value),
      '%',
      (hba1c.effectiveDateTime as string).slice(0, 10),
    ]);
  });

  it('leaves generated patients otherwise unchanged when planting', () => {
    const now = new Date('2026-06-01T00:00:00Z');
    const plain = generatePatients({ count: 3, seed: 5, now });
    const planted = generatePatients({ count: 3, seed: 5, now, plantFacts: true });
    plain.forEach((patient, index) => {
      const other = planted[index];
      expect(other.resources.map((resource) => resource.id)).toEqual(
        patient.resources.map((resource) => resource.id),
      );
      const changed = patient.resources.filter(
        (resource, position) => JSON.stringify(resource) !== JSON.stringify(other.resources[position]),
      );
      // Only the two planted notes (inline, or their Binary) differ.
      expect(changed).toHaveLength(2);
      expect(patient.plantedFacts).toEqual([]);
      expect(other.plantedFacts).toHaveLength(2);
    });
  });
});
