import type { PatientRecord } from '../../fhir/patient-record.ts';
import type { DraftKind } from '../draft-engine.ts';
import { defaultNoteOrder, type MaterialItem, noteItem, selectMaterial } from '../material.ts';
import {
  allergyLine,
  conditionLine,
  encounterLine,
  immunizationLine,
  medicationLine,
  observationLine,
  procedureLine,
} from '../record-lines.ts';
import type { Navigation } from './navigate.ts';

/**
 * Step 2, select material: what facts are extracted from. The notes the model read come first, then
 * its reading list (notes, and resources as their one-line form), then code's own order (the
 * encounter's notes, then the newest), within the plan's token budget. A reference that names
 * nothing in this patient's record is ignored: the reading list cannot reach outside the patient.
 */
function resourceLines(record: PatientRecord): Map<string, string> {
  const lines = new Map<string, string>();
  const add = (line: string) => {
    const match = /^\[([^\]]+)\]/.exec(line);
    if (match) lines.set(match[1], line);
  };
  record.conditions.map(conditionLine).forEach(add);
  record.medications.map(medicationLine).forEach(add);
  record.allergies.map(allergyLine).forEach(add);
  record.observations.map(observationLine).forEach(add);
  record.encounters.map(encounterLine).forEach(add);
  add(encounterLine(record.encounter));
  record.procedures.map(procedureLine).forEach(add);
  record.immunizations.map(immunizationLine).forEach(add);
  return lines;
}

export function selectDraftMaterial(input: {
  record: PatientRecord;
  kind: DraftKind;
  navigation: Pick<Navigation, 'notesRead' | 'readingList'>;
  materialTokens: number;
  countTokens: (text: string) => number;
}): MaterialItem[] {
  const { record, countTokens } = input;
  const notesByReference = new Map(record.notes.map((note) => [note.reference, note]));
  const lines = resourceLines(record);
  const chosen: MaterialItem[] = input.navigation.notesRead.map((note) => noteItem(note, countTokens));
  const structured: string[] = [];
  for (const reference of input.navigation.readingList) {
    const note = notesByReference.get(reference) ?? notesByReference.get(`DocumentReference/${reference}`);
    if (note) chosen.push(noteItem(note, countTokens));
    else if (lines.has(reference)) structured.push(lines.get(reference)!);
  }
  if (structured.length) {
    const text = `Resources the model asked for:\n${structured.join('\n')}`;
    const reference = /^\[([^\]]+)\]/.exec(structured[0])![1];
    chosen.push({ reference, text, tokens: countTokens(text) });
  }
  const defaults = defaultNoteOrder(record, input.kind).map((note) => noteItem(note, countTokens));
  return selectMaterial([...chosen, ...defaults], input.materialTokens, countTokens);
}
