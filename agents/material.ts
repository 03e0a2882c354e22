import type { ClinicalNote, PatientRecord } from '../fhir/patient-record.ts';
import type { DraftKind } from './draft-engine.ts';
import { newestFirst } from './record-lines.ts';
import { sanitizeNoteText } from './record-tools.ts';

/**
 * The material facts are extracted from: notes (and resource lines) chosen by the model, topped up
 * by code with the encounter's own notes and then the newest ones, within a token budget. Material
 * larger than one call is split into chunks (the map of map-reduce).
 */
export interface MaterialItem {
  /** `Type/id` the item's facts cite. */
  reference: string;
  text: string;
  tokens: number;
}

interface MaterialChunk {
  items: MaterialItem[];
  references: string[];
  tokens: number;
}

function noteBelongsToEncounter(note: ClinicalNote, record: PatientRecord): boolean {
  const resource = record.noteResources.find((candidate) => candidate.id === note.id);
  const encounterReference = `Encounter/${record.encounter.id}`;
  if (resource?.context?.encounter?.some((reference) => reference.reference === encounterReference))
    return true;
  const start = record.encounter.period?.start;
  const end = record.encounter.period?.end ?? start;
  return !!(
    note.date &&
    start &&
    end &&
    note.date.slice(0, 10) >= start.slice(0, 10) &&
    note.date.slice(0, 10) <= end.slice(0, 10)
  );
}

/** Notes in the order code would read them when the model has not asked: the encounter's own first, then newest. */
export function defaultNoteOrder(record: PatientRecord, kind: DraftKind): ClinicalNote[] {
  const newest = newestFirst(record.notes, (note) => note.date);
  if (kind === 'previsit-briefing') return newest;
  const own = newest.filter((note) => noteBelongsToEncounter(note, record));
  return [...own, ...newest.filter((note) => !own.includes(note))];
}

export function noteItem(note: ClinicalNote, countTokens: (text: string) => number): MaterialItem {
  const text = `[${note.reference}] ${note.title} (${note.date?.slice(0, 10) ?? 'undated'}):\n${sanitizeNoteText(note.text).trim()}`;
  return { reference: note.reference, text, tokens: countTokens(text) };
}

/** Splits an item larger than a chunk into parts that each still name their source. */
function splitItem(
  item: MaterialItem,
  capacity: number,
  countTokens: (text: string) => number,
): MaterialItem[] {
  if (item.tokens <= capacity) return [item];
  const parts: MaterialItem[] = [];
  const charactersPerPart = Math.max(200, Math.floor((item.text.length * capacity) / item.tokens) - 100);
  for (let start = 0, part = 1; start < item.text.length; start += charactersPerPart, part++) {
    const prefix = part === 1 ? '' : `[${item.reference}] (continued, part ${part}):\n`;
    const text = prefix + item.text.slice(start, start + charactersPerPart);
    parts.push({ reference: item.reference, text, tokens: countTokens(text) });
  }
  return parts;
}

/** Takes items in order until the budget is spent; an item that does not fit whole is cut to fit. */
export function selectMaterial(
  ordered: MaterialItem[],
  budgetTokens: number,
  countTokens: (text: string) => number,
): MaterialItem[] {
  const selected: MaterialItem[] = [];
  const seen = new Set<string>();
  let used = 0;
  for (const item of ordered) {
    if (seen.has(item.text)) continue;
    const left = budgetTokens - used;
    if (left < 100) break;
    if (item.tokens <= left) {
      selected.push(item);
      used += item.tokens;
    } else {
      const text = `${item.text.slice(0, Math.floor((item.text.length * left) / item.tokens) - 40)}\n(cut)`;
      const tokens = countTokens(text);
      selected.push({ reference: item.reference, text, tokens });
      used += tokens;
    }
    seen.add(item.text);
  }
  return selected;
}

/** Greedy packing in order, so a note's parts stay together and chunks stay few. */
export function packChunks(
  items: MaterialItem[],
  capacity: number,
  countTokens: (text: string) => number,
): MaterialChunk[] {
  const chunks: MaterialChunk[] = [];
  let current: MaterialChunk = { items: [], references: [], tokens: 0 };
  for (const whole of items) {
    for (const item of splitItem(whole, capacity, countTokens)) {
      const cost = item.tokens + 2;
      if (current.items.length && current.tokens + cost > capacity) {
        chunks.push(current);
        current = { items: [], references: [], tokens: 0 };
      }
      current.items.push(item);
      current.tokens += cost;
      if (!current.references.includes(item.reference)) current.references.push(item.reference);
    }
  }
  if (current.items.length) chunks.push(current);
  return chunks;
}
