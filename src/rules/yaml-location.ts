import { type Document, isMap, isNode, isScalar, type LineCounter, type Node } from 'yaml';

/**
 * Maps a path inside a parsed YAML document back to a line in its file, so every error an
 * informatics team sees names the line to fix.
 */
export interface YamlPosition {
  line: number;
  column: number;
}

export function positionOf(
  document: Document,
  lineCounter: LineCounter,
  path: readonly PropertyKey[],
  unknownKey?: string,
): YamlPosition | undefined {
  // Walk as deep as the path goes: an error under a missing key points at its parent.
  let node: unknown = document.contents;
  let best: Node | undefined = isNode(node) ? node : undefined;
  for (const segment of path) {
    if (!isNode(node) || !('get' in node)) break;
    const child = (node as { get(key: unknown, keepScalar: boolean): unknown }).get(segment, true);
    if (!isNode(child)) break;
    node = child;
    best = child;
  }
  if (unknownKey !== undefined && isMap(node)) {
    const pair = node.items.find((item) => isScalar(item.key) && item.key.value === unknownKey);
    if (pair && isNode(pair.key)) best = pair.key;
  }
  const offset = best?.range?.[0];
  if (offset === undefined) return undefined;
  const { line, col } = lineCounter.linePos(offset);
  return { line, column: col };
}

/**
 * Line of the first character of a scalar's content: block scalars (`|`, `>`) start on the next
 * line, so an error at line N of a multi-line FHIRPath lands on the right line of the file.
 */
export function contentLine(
  document: Document,
  lineCounter: LineCounter,
  path: readonly PropertyKey[],
): { line: number; block: boolean } | undefined {
  const node = document.getIn(path, true);
  if (!isScalar(node) || !node.range) return undefined;
  const block = node.type === 'BLOCK_LITERAL' || node.type === 'BLOCK_FOLDED';
  const { line } = lineCounter.linePos(node.range[0]);
  return { line: block ? line + 1 : line, block };
}
