// The small part of Markdown that drafts use (headings, "Label:" section lines, lists, rules, **bold**), read
// into plain data. Nothing here produces HTML: the page builds elements from these blocks and puts every
// piece of draft text into them as text, so hostile note text still shows as text.

export const citationPattern =
  /\[([A-Z][A-Za-z]{1,63})\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/([A-Za-z0-9\-.]{1,64}))?\]/g;

const headingPattern = /^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const listItemPattern = /^(\s*)([-*+]|\d{1,3}[.)])\s+(.*)$/;
const rulePattern = /^ {0,3}([-*_])(\s*\1){2,}\s*$/;
/** "Active problems:": a short label ending the line, with no sentence or citation in it. */
const labelPattern = /^([^.[\]#*\-+\s][^.[\]]{0,79}):\s*$/;

/**
 * Blocks of a draft: `{ type: 'heading', depth, text }` (depth 1 is the draft's top level), `{ type: 'list',
 * ordered, items: [{ text, children }] }`, `{ type: 'paragraph', lines }` and `{ type: 'rule' }`. Markdown
 * heading levels are ranked, so `##` and `###` become depths 1 and 2 whatever numbers the text used; label
 * lines sit one depth below the deepest Markdown heading.
 */
export function parseDraftText(text) {
  const lines = String(text ?? '')
    .replace(/\r\n?/g, '\n')
    .split('\n');
  const levels = [
    ...new Set(lines.map((line) => headingPattern.exec(line)?.[1].length).filter(Boolean)),
  ].sort((a, b) => a - b);
  const depthOf = (level) => levels.indexOf(level) + 1;
  const labelDepth = levels.length + 1;

  const blocks = [];
  let paragraph;
  /** Open lists, outermost first: `{ indent, list }`. */
  let openLists = [];
  const closeAll = () => {
    paragraph = undefined;
    openLists = [];
  };

  for (const line of lines) {
    if (line.trim() === '') {
      closeAll();
      continue;
    }
    const heading = headingPattern.exec(line);
    if (heading) {
      closeAll();
      blocks.push({ type: 'heading', depth: depthOf(heading[1].length), text: heading[2] });
      continue;
    }
    if (rulePattern.test(line)) {
      closeAll();
      blocks.push({ type: 'rule' });
      continue;
    }
    const item = listItemPattern.exec(line);
    if (item) {
      paragraph = undefined;
      const indent = item[1].replace(/\t/g, '    ').length;
      const ordered = /\d/.test(item[2]);
      while (openLists.length > 0 && openLists.at(-1).indent > indent) openLists.pop();
      let current = openLists.at(-1);
      if (current && indent > current.indent) {
        // Deeper than the list it follows: a list inside that list's last item.
        const parent = current.list.items.at(-1);
        const nested = { type: 'list', ordered, items: [] };
        parent.children.push(nested);
        current = { indent, list: nested };
        openLists.push(current);
      } else if (!current || current.list.ordered !== ordered) {
        const list = { type: 'list', ordered, items: [] };
        if (current) openLists.pop();
        if (openLists.length > 0) openLists.at(-1).list.items.at(-1).children.push(list);
        else blocks.push(list);
        current = { indent, list };
        openLists.push(current);
      }
      current.list.items.push({ text: item[3], children: [] });
      continue;
    }
    if (labelPattern.test(line.trim())) {
      closeAll();
      blocks.push({ type: 'heading', depth: labelDepth, text: line.trim().replace(/:\s*$/, '') });
      continue;
    }
    const deepest = openLists.at(-1);
    if (deepest && /^\s+/.test(line)) {
      // An indented line under a list item continues that item.
      const last = deepest.list.items.at(-1);
      last.text = `${last.text} ${line.trim()}`;
      continue;
    }
    openLists = [];
    if (!paragraph) {
      paragraph = { type: 'paragraph', lines: [] };
      blocks.push(paragraph);
    }
    paragraph.lines.push(line.trim());
  }
  return blocks;
}

/**
 * One line of text as parts: `{ type: 'text', text }`, `{ type: 'strong', text }` and `{ type: 'citation',
 * label, resourceType, id, version }` for each `[Type/id]` or `[Type/id/_history/v]`.
 */
export function inlineParts(text) {
  const parts = [];
  const source = String(text ?? '');
  let last = 0;
  for (const match of source.matchAll(citationPattern)) {
    if (match.index > last) parts.push(...emphasisParts(source.slice(last, match.index)));
    parts.push({
      type: 'citation',
      label: match[0],
      resourceType: match[1],
      id: match[2],
      version: match[3],
    });
    last = match.index + match[0].length;
  }
  if (last < source.length) parts.push(...emphasisParts(source.slice(last)));
  return parts;
}

function emphasisParts(text) {
  const parts = [];
  let last = 0;
  for (const match of text.matchAll(/\*\*(?=\S)(.+?)\*\*/g)) {
    if (match.index > last) parts.push({ type: 'text', text: text.slice(last, match.index) });
    parts.push({ type: 'strong', text: match[1] });
    last = match.index + match[0].length;
  }
  if (last < text.length) parts.push({ type: 'text', text: text.slice(last) });
  return parts;
}
