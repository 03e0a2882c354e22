// Types for the page's own module (review-markdown.js), which the browser loads as plain JavaScript.
export type DraftBlock =
  | { type: 'heading'; depth: number; text: string }
  | { type: 'list'; ordered: boolean; items: DraftListItem[] }
  | { type: 'paragraph'; lines: string[] }
  | { type: 'rule' };

export interface DraftListItem {
  text: string;
  children: Extract<DraftBlock, { type: 'list' }>[];
}

export type InlinePart =
  | { type: 'text'; text: string }
  | { type: 'strong'; text: string }
  | { type: 'citation'; label: string; resourceType: string; id: string; version: string | undefined };

export const citationPattern: RegExp;
export function parseDraftText(text: string): DraftBlock[];
export function inlineParts(text: string): InlinePart[];
