import { OperationOutcomeError, outcome } from '../fhir/operation-outcome.ts';
import { type PatientRecord, recordResources } from '../fhir/patient-record.ts';
import { patientReferenceOf } from '../fhir/patient-scope.ts';

/**
 * The grounding verifier: every line of a draft that states something must cite, as `[Type/id]`,
 * a resource of this patient that was actually read in this run. Lines that cite nothing, something
 * not read, or another patient are removed and the draft is flagged, so nothing unsupported is
 * written silently. Only blank lines and the exact heading lines of the draft kind's own template
 * need no citation: text that merely looks like a heading (`# ...`, `Label:`) is verified like any
 * other line, since record text and model output can take that shape.
 */
type RemovalReason = 'no-citation' | 'unknown-citation' | 'other-patient';

export interface CitationVerification {
  /** The text with unsupported lines removed. */
  text: string;
  /** Every distinct `Type/id` the kept text cites. */
  cited: string[];
  /** Lines removed, each with why. Patient data: never log the lines, only counts of reasons. */
  removed: { line: string; reason: RemovalReason; citations: string[] }[];
  /** True when anything was removed: the reviewer is told. */
  flagged: boolean;
}

/** What a draft may cite, and what it must never cite. */
export interface CitationScope {
  /** `Patient/<id>` of the patient the draft is about. */
  patient: string;
  /** `Type/id` of every resource of this patient this run read. */
  citable: ReadonlySet<string> | ReadonlyMap<string, unknown>;
  /** `Type/id` of resources the run read that belong to another patient (a server that sent more than asked). */
  otherPatients?: ReadonlySet<string>;
  /** The heading lines the draft kind's template emits, exactly: the only lines besides blank ones needing no citation. */
  headings: readonly string[];
}

const citationPattern = /\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?\]/g;

export function citationsIn(text: string): string[] {
  return [...text.matchAll(citationPattern)].map((match) => match[1]);
}

/** Which references of a record may be cited: the record's resources that belong to its patient. */
export function citationScopeOf(
  record: PatientRecord,
  headings: readonly string[],
  shown?: readonly string[],
): CitationScope {
  const patient = `Patient/${record.patient.id}`;
  const citable = new Set<string>();
  const otherPatients = new Set<string>();
  // An engine that showed its model only part of the record narrows what it may cite, never widens it.
  const wasShown = shown ? new Set(shown) : undefined;
  for (const resource of recordResources(record)) {
    const reference = `${resource.resourceType}/${resource.id}`;
    const owner = patientReferenceOf(resource);
    // A resource naming no patient is not known to be this patient's: it may not be cited either.
    if (owner !== undefined && owner !== patient) otherPatients.add(reference);
    else if (owner === patient && (!wasShown || wasShown.has(reference))) citable.add(reference);
  }
  return { patient, citable, otherPatients, headings };
}

function reasonFor(citations: string[], scope: CitationScope): RemovalReason | undefined {
  if (citations.length === 0) return 'no-citation';
  const ofOtherPatient = (citation: string) =>
    (citation.startsWith('Patient/') && citation !== scope.patient) ||
    Boolean(scope.otherPatients?.has(citation));
  if (citations.some(ofOtherPatient)) return 'other-patient';
  if (citations.some((citation) => !scope.citable.has(citation))) return 'unknown-citation';
  return undefined;
}

export function verifyCitations(text: string, scope: CitationScope): CitationVerification {
  const headings = new Set(scope.headings.map((heading) => heading.trim()));
  const kept: string[] = [];
  const cited = new Set<string>();
  const removed: CitationVerification['removed'] = [];
  for (const line of text.split('\n')) {
    const citations = citationsIn(line);
    const trimmed = line.trim();
    if (citations.length === 0 && (trimmed === '' || headings.has(trimmed))) {
      kept.push(line);
      continue;
    }
    const reason = reasonFor(citations, scope);
    if (reason) {
      removed.push({ line, reason, citations });
      continue;
    }
    for (const citation of citations) cited.add(citation);
    kept.push(line);
  }
  return {
    text: kept
      .join('\n')
      .replace(/\n{3,}/g, '\n\n')
      .trim(),
    cited: [...cited],
    removed,
    flagged: removed.length > 0,
  };
}

/** Removed lines counted by reason: what logs may say about them (never the lines themselves). */
export function removalCounts(verification: CitationVerification): Record<RemovalReason, number> {
  const counts: Record<RemovalReason, number> = {
    'no-citation': 0,
    'unknown-citation': 0,
    'other-patient': 0,
  };
  for (const entry of verification.removed) counts[entry.reason] += 1;
  return counts;
}

/** A draft with no supported line left: no draft rather than an empty one, and retrying cannot help. */
export class EmptyDraftError extends OperationOutcomeError {
  readonly code = 'empty-draft';

  constructor(removedLines: number) {
    super(
      outcome(
        'processing',
        `The draft kept no supported line (${removedLines} removed by the citation verifier)`,
      ),
      { status: 422 },
    );
    this.name = 'EmptyDraftError';
  }
}
