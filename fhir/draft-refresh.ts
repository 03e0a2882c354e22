import { createHash } from 'node:crypto';
import type { DocumentReference, Encounter, Extension, FhirResource } from 'fhir/r4.js';
import { inlineNoteText } from './note-text.ts';

/**
 * Keeping a draft in step with its encounter. Each draft records, in `context.extension`, what the
 * service wrote it from: the encounter version, how far the record it read reached (the server's own
 * `lastUpdated` clock), and a digest of the text as the service wrote it. With that, a later version of
 * the encounter can tell two cases apart without asking anyone:
 *
 * - the draft is still as the service left it: it may be rewritten in place (a new version of the same
 *   DocumentReference);
 * - a clinician has edited, signed or rejected it: it is never rewritten, and what changed in the record
 *   since it was drafted is noted beside it (counts and references only).
 *
 * "As the service left it" is read from the DocumentReference itself: preliminary and current, the text's
 * digest still the one the service recorded, and no clinician-edit tag. Those travel with the resource and
 * change in the same write as the clinician's own, so no separate request (an edit's Provenance is written
 * after the edit, and `Provenance?target=` misses versioned targets on some servers) can be missing or
 * late, and an edit made in the EHR's own note editor, which writes no Provenance of ours, still counts.
 * Anything the service cannot vouch for (no digest, text not inline) counts as the clinician's.
 */
export const draftBasisExtensionUrl = 'urn:ehr-draft-agent:fhir:StructureDefinition/draft-basis';

/** Set on the DocumentReference by the review app's edit, so even a save without changes counts as the clinician's. */
export const clinicianEditedTag = {
  system: 'urn:ehr-draft-agent:fhir:CodeSystem/draft-workflow',
  code: 'clinician-edited',
  display: 'Edited by a clinician',
};

export interface DraftBasis {
  /** The encounter's versionId (its lastUpdated on servers without versions) the text was written from. */
  encounterVersion?: string;
  /** That version's `meta.lastUpdated` (the server's clock): orders two versions whose ids say nothing of order. */
  encounterUpdated?: string;
  /** The latest `meta.lastUpdated` among the resources read for the text: the FHIR server's clock, not ours. */
  retrievedThrough?: string;
  /** `sha256:<hex>` of the text as the service wrote it. */
  textDigest?: string;
  /** When the service last rewrote the draft for a later version of its encounter. */
  refreshedAt?: string;
}

/** The encounter's version as the work key names it (fhir servers without versionId give lastUpdated). */
export function encounterVersionOf(encounter: Encounter): string | undefined {
  return encounter.meta?.versionId ?? encounter.meta?.lastUpdated;
}

export function textDigest(text: string): string {
  return `sha256:${createHash('sha256').update(text, 'utf8').digest('hex')}`;
}

/**
 * Whether the draft was written from a later version of the encounter than `basis` names (by the server's
 * lastUpdated): a job holding an older version must not write over it. False when either time is unknown.
 */
export function writtenFromLaterEncounter(
  draft: DraftBasis | undefined,
  basis: DraftBasis | undefined,
): boolean {
  const drafted = Date.parse(draft?.encounterUpdated ?? '');
  const ours = Date.parse(basis?.encounterUpdated ?? '');
  return Number.isFinite(drafted) && Number.isFinite(ours) && drafted > ours;
}

/** The latest lastUpdated among the resources read, or undefined when the server gave none. */
export function latestUpdate(resources: readonly FhirResource[]): string | undefined {
  let latest: { at: number; value: string } | undefined;
  for (const resource of resources) {
    const value = resource.meta?.lastUpdated;
    const at = value ? Date.parse(value) : Number.NaN;
    if (Number.isFinite(at) && (!latest || at > latest.at)) latest = { at, value: value as string };
  }
  return latest?.value;
}

export function draftBasisExtension(basis: DraftBasis): Extension {
  return {
    url: draftBasisExtensionUrl,
    extension: [
      ...(basis.encounterVersion ? [{ url: 'encounterVersion', valueString: basis.encounterVersion }] : []),
      ...(basis.encounterUpdated ? [{ url: 'encounterUpdated', valueInstant: basis.encounterUpdated }] : []),
      ...(basis.retrievedThrough ? [{ url: 'retrievedThrough', valueInstant: basis.retrievedThrough }] : []),
      ...(basis.textDigest ? [{ url: 'textDigest', valueString: basis.textDigest }] : []),
      ...(basis.refreshedAt ? [{ url: 'refreshedAt', valueInstant: basis.refreshedAt }] : []),
    ],
  };
}

/** The basis a draft recorded for itself; undefined for drafts written before drafts recorded one. */
export function draftBasisOf(document: DocumentReference): DraftBasis | undefined {
  const extension = document.context?.extension?.find((entry) => entry.url === draftBasisExtensionUrl);
  if (!extension) return undefined;
  const part = (name: string) => extension.extension?.find((entry) => entry.url === name);
  const basis: DraftBasis = {};
  const encounterVersion = part('encounterVersion')?.valueString;
  const encounterUpdated = part('encounterUpdated')?.valueInstant;
  const retrievedThrough = part('retrievedThrough')?.valueInstant;
  const digest = part('textDigest')?.valueString;
  const refreshedAt = part('refreshedAt')?.valueInstant;
  if (encounterVersion) basis.encounterVersion = encounterVersion;
  if (encounterUpdated) basis.encounterUpdated = encounterUpdated;
  if (retrievedThrough) basis.retrievedThrough = retrievedThrough;
  if (digest) basis.textDigest = digest;
  if (refreshedAt) basis.refreshedAt = refreshedAt;
  return basis;
}

/** The document tagged as edited by a clinician (the tag is kept once set). */
export function taggedAsEdited(document: DocumentReference): DocumentReference {
  const tags = document.meta?.tag ?? [];
  if (tags.some((tag) => tag.system === clinicianEditedTag.system && tag.code === clinicianEditedTag.code))
    return document;
  return { ...document, meta: { ...document.meta, tag: [...tags, clinicianEditedTag] } };
}

/**
 * Whether anyone but the service has had a hand in the draft: signed, rejected, superseded, edited (its
 * text no longer the one the service recorded, or the review app's edit tag), or impossible to tell.
 */
export function touchedSinceDrafted(document: DocumentReference): boolean {
  if (document.status !== 'current' || document.docStatus !== 'preliminary') return true;
  if (
    document.meta?.tag?.some(
      (tag) => tag.system === clinicianEditedTag.system && tag.code === clinicianEditedTag.code,
    )
  )
    return true;
  const digest = draftBasisOf(document)?.textDigest;
  if (!digest) return true;
  const text = inlineNoteText(document);
  return text === undefined || textDigest(text) !== digest;
}

/** One resource type's share of a record change. */
export interface RecordChangeCount {
  resourceType: string;
  /** Not among the draft's sources and written after the draft's record was read. */
  added: number;
  /** Among the draft's sources, now at another version. */
  changed: number;
  /** Among the draft's sources, no longer in the record (deleted, or entered in error). */
  removed: number;
}

/**
 * What changed in the record since a draft was written: counts per resource type and the references
 * (versioned where known), never anything of the resources' content. Kept beside a draft a clinician has
 * already had a hand in, which the service no longer rewrites.
 */
export interface RecordChange {
  encounterId: string;
  /** The encounter version the draft was written from, and the one the record is at now. */
  encounterFrom?: string;
  encounterTo?: string;
  /** `meta.lastUpdated` of the encounter's version now (orders notes from jobs that raced). */
  encounterUpdated?: string;
  counts: RecordChangeCount[];
  added: string[];
  changed: string[];
  removed: string[];
  /** References beyond the lists' cap are counted, not listed. */
  truncated?: boolean;
  detectedAt: string;
}

const maxListedReferences = 50;

const versioned = (reference: string, versionId: string | undefined) =>
  versionId ? `${reference}/_history/${versionId}` : reference;

/**
 * Compares the draft's recorded basis (its cited sources at exact versions, and how far its record
 * reached) with a new retrieval. A resource the draft did not cite counts as added only when it was
 * written after the draft's record was read, so the rest of the chart, read then too, is not reported.
 * The encounter itself is reported as its versions, and the Patient's own details are not a change to the note.
 */
export function recordChangeSince(input: {
  encounter: Encounter;
  basis: DraftBasis | undefined;
  /** `Type/id` -> versionId of what the draft cites (its `context.related`). */
  sources: ReadonlyMap<string, string | undefined>;
  /** Everything the new retrieval read. */
  current: readonly FhirResource[];
  now: Date;
}): RecordChange {
  const { encounter, basis, sources, current } = input;
  const encounterReference = `Encounter/${encounter.id}`;
  const reported = (reference: string) =>
    reference !== encounterReference && !reference.startsWith('Patient/');
  const currentByReference = new Map<string, FhirResource>(
    current.map((resource) => [`${resource.resourceType}/${resource.id}`, resource]),
  );
  const counts = new Map<string, RecordChangeCount>();
  const count = (reference: string, kind: 'added' | 'changed' | 'removed') => {
    const resourceType = reference.split('/')[0];
    const entry = counts.get(resourceType) ?? { resourceType, added: 0, changed: 0, removed: 0 };
    entry[kind]++;
    counts.set(resourceType, entry);
  };
  const added: string[] = [];
  const changed: string[] = [];
  const removed: string[] = [];

  for (const [reference, versionId] of sources) {
    if (!reported(reference)) continue;
    const now = currentByReference.get(reference);
    if (!now) {
      count(reference, 'removed');
      removed.push(versioned(reference, versionId));
    } else if (versionId && now.meta?.versionId && now.meta.versionId !== versionId) {
      count(reference, 'changed');
      changed.push(versioned(reference, now.meta.versionId));
    }
  }
  const readThrough = basis?.retrievedThrough ? Date.parse(basis.retrievedThrough) : Number.NaN;
  if (Number.isFinite(readThrough)) {
    for (const [reference, resource] of currentByReference) {
      if (!reported(reference) || sources.has(reference)) continue;
      const updated = resource.meta?.lastUpdated ? Date.parse(resource.meta.lastUpdated) : Number.NaN;
      if (!(updated > readThrough)) continue;
      count(reference, 'added');
      added.push(versioned(reference, resource.meta?.versionId));
    }
  }
  const encounterTo = encounterVersionOf(encounter);
  const truncated = [added, changed, removed].some((list) => list.length > maxListedReferences);
  return {
    encounterId: encounter.id as string,
    ...(basis?.encounterVersion ? { encounterFrom: basis.encounterVersion } : {}),
    ...(encounterTo ? { encounterTo } : {}),
    ...(encounter.meta?.lastUpdated ? { encounterUpdated: encounter.meta.lastUpdated } : {}),
    counts: [...counts.values()].sort((left, right) => left.resourceType.localeCompare(right.resourceType)),
    added: added.slice(0, maxListedReferences),
    changed: changed.slice(0, maxListedReferences),
    removed: removed.slice(0, maxListedReferences),
    ...(truncated ? { truncated } : {}),
    detectedAt: input.now.toISOString(),
  };
}

/** How a clinician names each kind of record entry: one, several. */
const nouns: Record<string, [string, string]> = {
  Observation: ['result', 'results'],
  Condition: ['diagnosis', 'diagnoses'],
  MedicationRequest: ['medication order', 'medication orders'],
  AllergyIntolerance: ['allergy', 'allergies'],
  Procedure: ['procedure', 'procedures'],
  Immunization: ['immunization', 'immunizations'],
  DocumentReference: ['note', 'notes'],
  Encounter: ['other visit', 'other visits'],
};

/** Results first: they are what most often arrives after a visit. */
const typeOrder = Object.keys(nouns);

function countText(number: number, adjective: string, resourceType: string): string {
  const [one, several] = nouns[resourceType] ?? [`${resourceType} entry`, `${resourceType} entries`];
  return `${number} ${adjective} ${number === 1 ? one : several}`;
}

/** "The record changed since this draft was written: 2 new results, 1 updated diagnosis, encounter updated." */
export function describeRecordChange(change: RecordChange): string {
  const ordered = [...change.counts].sort(
    (left, right) =>
      (typeOrder.indexOf(left.resourceType) + 1 || typeOrder.length + 1) -
        (typeOrder.indexOf(right.resourceType) + 1 || typeOrder.length + 1) ||
      left.resourceType.localeCompare(right.resourceType),
  );
  const parts: string[] = [];
  for (const [kind, adjective] of [
    ['added', 'new'],
    ['changed', 'updated'],
    ['removed', 'removed'],
  ] as const) {
    for (const entry of ordered)
      if (entry[kind] > 0) parts.push(countText(entry[kind], adjective, entry.resourceType));
  }
  if (change.encounterFrom !== change.encounterTo) parts.push('encounter updated');
  return parts.length > 0
    ? `The record changed since this draft was written: ${parts.join(', ')}.`
    : 'The record changed since this draft was written.';
}
