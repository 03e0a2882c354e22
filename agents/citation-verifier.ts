/**
 * The grounding verifier: every sentence of a draft must cite, as `[Type/id]`, a resource that was
 * actually retrieved in this run. Lines that cite nothing retrieved are removed and the draft is
 * flagged, so nothing unsupported is written silently. Headings and blank lines pass as they are.
 */
export interface CitationVerification {
  /** The text with unsupported lines removed. */
  text: string;
  /** Every distinct `Type/id` the kept text cites. */
  cited: string[];
  /** Lines removed because they cited nothing, or something not retrieved. */
  removed: { line: string; reason: 'no-citation' | 'unknown-citation'; citations: string[] }[];
  /** True when anything was removed: the reviewer is told. */
  flagged: boolean;
}

const citationPattern = /\[([A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64})(?:\/_history\/[A-Za-z0-9\-.]{1,64})?\]/g;

export function citationsIn(text: string): string[] {
  return [...text.matchAll(citationPattern)].map((match) => match[1]);
}

/** A heading (`## ...`, `Problems:`) or a separator states no fact and needs no citation. */
function isStructuralLine(line: string): boolean {
  const trimmed = line.trim();
  return (
    trimmed === '' ||
    trimmed.startsWith('#') ||
    /^[^.[\]]{1,80}:$/.test(trimmed) ||
    /^[-=_*]{3,}$/.test(trimmed)
  );
}

export function verifyCitations(
  text: string,
  retrieved: ReadonlySet<string> | ReadonlyMap<string, unknown>,
): CitationVerification {
  const kept: string[] = [];
  const cited = new Set<string>();
  const removed: CitationVerification['removed'] = [];
  for (const line of text.split('\n')) {
    if (isStructuralLine(line)) {
      kept.push(line);
      continue;
    }
    const citations = citationsIn(line);
    if (citations.length === 0) {
      removed.push({ line, reason: 'no-citation', citations });
      continue;
    }
    if (citations.some((citation) => !retrieved.has(citation))) {
      removed.push({ line, reason: 'unknown-citation', citations });
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
