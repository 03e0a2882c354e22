import { Parser } from 'htmlparser2';

/**
 * An HTML (or XHTML) note as plain text a reader would see: entities decoded (named and numeric), block
 * elements and line breaks as line breaks, list items as "- " lines (numbered in ordered lists), table cells separated by tabs, and
 * headings kept as markdown headings (`## Plan`) so the section finder sees them. Scripts, styles, the head
 * and comments are dropped.
 */

/** Elements whose content is never shown as text. */
const hiddenElements = new Set(['script', 'style', 'head', 'title', 'template', 'noscript', 'object', 'svg']);

/** Elements that start and end a line of their own. */
const blockElements = new Set([
  'address',
  'article',
  'aside',
  'blockquote',
  'body',
  'caption',
  'dd',
  'div',
  'dl',
  'dt',
  'fieldset',
  'figcaption',
  'figure',
  'footer',
  'form',
  'header',
  'hr',
  'li',
  'main',
  'nav',
  'ol',
  'p',
  'pre',
  'section',
  'table',
  'tbody',
  'tfoot',
  'thead',
  'tr',
  'ul',
]);

/** C-CDA narrative block elements, read as the HTML elements they stand for. */
const narrativeElements: Record<string, string> = { paragraph: 'p', list: 'ul', item: 'li', caption: 'p' };

/** Text lines built up element by element; whitespace collapsed as a browser does outside <pre>. */
class TextLines {
  private readonly lines: string[] = [];
  private current = '';

  text(text: string, preformatted: boolean) {
    if (preformatted) {
      const [first, ...rest] = text.split(/\r?\n/);
      this.current += first;
      for (const line of rest) {
        this.lineBreak();
        this.current += line;
      }
      return;
    }
    const collapsed = text.replace(/[ \t\r\n\f]+/g, ' ');
    this.current += this.current === '' || this.current.endsWith(' ') ? collapsed.trimStart() : collapsed;
  }

  /** Ends the current line (an empty one too: <br><br> is a blank line). */
  lineBreak() {
    this.lines.push(this.current.trimEnd());
    this.current = '';
  }

  /** Ends the current line unless nothing is on it. */
  endBlock() {
    if (this.current.trim() !== '') this.lineBreak();
  }

  /** Starts a line with this prefix (a heading's #s, a list dash). */
  startLine(prefix: string) {
    this.endBlock();
    this.current = prefix;
  }

  cell() {
    if (this.current.trim() !== '' && !this.current.endsWith('\t'))
      this.current = `${this.current.trimEnd()}\t`;
  }

  result(): string {
    this.endBlock();
    return this.lines
      .join('\n')
      .replace(/\t+$/gm, '')
      .replace(/\n{3,}/g, '\n\n')
      .trim();
  }
}

export interface MarkupTextOptions {
  /** XML rules (C-CDA narrative, XHTML): case-sensitive names, self-closing tags, no HTML-only entities. */
  xmlMode?: boolean;
}

/** The visible text of an HTML note, with its headings as markdown headings. */
export function htmlToText(html: string, options: MarkupTextOptions = {}): string {
  const lines = new TextLines();
  let hiddenDepth = 0;
  let preformattedDepth = 0;
  // Open lists, innermost last: an ordered list's items keep their numbers (a plan's "1.", "2.").
  const lists: { ordered: boolean; items: number }[] = [];
  const elementName = (name: string) => {
    const tag = name.toLowerCase().replace(/^[a-z_][\w.-]*:/, '');
    return narrativeElements[tag] ?? tag;
  };
  const headingLevel = (name: string) => (/^h[1-6]$/.test(name) ? Number(name[1]) : 0);
  const parser = new Parser(
    {
      onopentag(name, attributes) {
        const ordered =
          elementName(name) === 'ul' && (attributes.listType ?? attributes.listtype) === 'ordered';
        const tag = ordered ? 'ol' : elementName(name);
        // Inside a hidden element every tag is counted, so its closing tag is found again.
        if (hiddenDepth > 0 || hiddenElements.has(tag)) {
          hiddenDepth++;
          return;
        }
        const level = headingLevel(tag);
        if (level > 0) lines.startLine(`${'#'.repeat(level)} `);
        else if (tag === 'li') {
          const list = lists.at(-1);
          lines.startLine(list?.ordered ? `${++list.items}. ` : '- ');
        } else if (tag === 'ul' || tag === 'ol') lists.push({ ordered: tag === 'ol', items: 0 });
        else if (tag === 'br') lines.lineBreak();
        else if (tag === 'td' || tag === 'th') lines.cell();
        else if (blockElements.has(tag)) lines.endBlock();
        if (tag === 'pre') preformattedDepth++;
      },
      ontext(text) {
        if (hiddenDepth === 0) lines.text(text, preformattedDepth > 0);
      },
      onclosetag(name) {
        const tag = elementName(name);
        if (hiddenDepth > 0) {
          hiddenDepth--;
          return;
        }
        if (tag === 'pre') preformattedDepth--;
        if (tag === 'ul' || tag === 'ol') lists.pop();
        if (headingLevel(tag) > 0) lines.lineBreak();
        else if (tag === 'p' || tag === 'table' || ((tag === 'ul' || tag === 'ol') && lists.length === 0)) {
          // A paragraph or (outermost) list ends with a blank line: the section finder reads paragraphs.
          lines.endBlock();
          lines.lineBreak();
        } else if (blockElements.has(tag)) lines.endBlock();
      },
    },
    { decodeEntities: true, xmlMode: options.xmlMode ?? false, recognizeSelfClosing: true },
  );
  parser.end(html);
  return lines.result();
}
