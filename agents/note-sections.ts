/**
 * The section finder: what a progress note concludes, read the way a clinician skims one. Notes come in many
 * heading styles (markdown `# Assessment and Plan` / `## Plan` as Synthea writes them, `ASSESSMENT AND PLAN:`,
 * `A/P:`, `Impression and Plan`, `Assessment & Plan`, SOAP letters, ALL CAPS lines, HTML and C-CDA sections
 * turned into markdown headings by fhir/note-formats/). The assessment-and-plan (or impression/plan) sections
 * are the note's conclusion; a note with them left empty contributes its reason for the visit, and one with
 * none its last paragraph(s) (not the lists of medications or allergies the draft has from the record), each
 * labelled as such, so no note is silently skipped. Output is bounded in length.
 */

export interface NoteConclusion {
  /**
   * Where the text came from: the note's assessment/plan sections; its reason for the visit when those are
   * there but empty; or its closing paragraph(s) when it has none.
   */
  kind: 'assessment-and-plan' | 'reason-for-visit' | 'last-paragraphs';
  /** One line of plain text (lists joined with semicolons), at most the length asked for. */
  text: string;
  /** Otherwise than for a plan: the heading of the section the text sits under, if any. */
  section?: string;
}

interface Heading {
  /** The heading as written, without markup or trailing colon. */
  name: string;
  /** Markdown level (1 for `#`); 0 for `Heading:` and ALL CAPS forms, whose nesting is not written. */
  level: number;
  /** Text after the colon on the heading's own line (`A/P: stable, continue`). */
  rest: string;
  kind: 'plan' | 'other' | 'generic';
  /**
   * A line that only announces what follows (`# Orders`, `The following procedures were conducted:`), as
   * opposed to an ALL CAPS line, which may itself be the text (`CONTINUE METFORMIN`).
   */
  announces: boolean;
}

/** Default length of a conclusion, in characters: a few sentences, what a reader takes in at a glance. */
export const defaultConclusionCharacters = 600;

/** A heading's words, normalised: lower case, `&`, `/` and `+` as "and", punctuation dropped. */
function normalised(name: string): string {
  return name
    .toLowerCase()
    .replace(/\s*[&/+]\s*/g, ' and ')
    .replace(/[^a-z ]+/g, ' ')
    .replace(/\s+/g, ' ')
    .trim();
}

/** Headings under which a note concludes. */
const planHeading =
  /^(?:a|p|ap|a and p|plan of care|care plan|treatment plan|(?:assessment|impression|clinical impression|diagnos[ie]s|dx|plan|recommendations?)(?: and (?:plan|recommendations?|plan of care|assessment|disposition|follow ?up))?)$/;

/** The other sections of a note: reaching one ends the conclusion. */
const otherHeading =
  /^(?:s|o|subjective|objective|cc|chief complaints?|reason for (?:visit|consultation|referral)|hpi|history of present illness|interval history|history|ros|review of systems|pe|exam|physical exam(?:ination)?|vitals?|vital signs|labs?|laborator(?:y|ies)(?: results)?|results|data|imaging|radiology|studies|pmh|past medical history|psh|past surgical history|fh|family history|sh|social history|medications?|current medications|meds|allergies|allergies and medications|immunizations|problem list|active problems|objective findings|signature|attestation|electronically signed(?: by)?|signed(?: by)?)$/;

/** Sections whose colon form may carry text on the heading line (`A/P: stable`, `S: cough`). */
const inlineHeading =
  /^(?:s|o|a|p|ap|a and p|subjective|objective|assessment|impression|plan|hpi|cc|chief complaint|reason for (?:visit|consultation|referral)|assessment and plan|impression and plan)$/;

function classify(name: string): Heading['kind'] {
  const words = normalised(name);
  if (planHeading.test(words)) return 'plan';
  if (otherHeading.test(words)) return 'other';
  return 'generic';
}

/** Emphasis a heading is often wrapped in (`**Plan:**`, `__A/P__`). */
function withoutEmphasis(line: string): string {
  return line.replace(/^(\s*)(\*\*|__)(.+?)\2/, '$1$3');
}

function headingOf(rawLine: string): Heading | undefined {
  const line = withoutEmphasis(rawLine).trim();
  if (line === '' || line.length > 120) return undefined;
  const markdown = /^(#{1,6})\s+(.*?)\s*#*$/.exec(line);
  if (markdown) {
    const name = markdown[2].replace(/\s*:$/, '').trim();
    return name
      ? { name, level: markdown[1].length, rest: '', kind: classify(name), announces: true }
      : undefined;
  }
  const colon = /^([A-Za-z][A-Za-z0-9 &/+,()'-]{0,48}?)\s*(?::|\s[-\u2013\u2014]\s)\s*(.*)$/.exec(line);
  if (colon) {
    const [, name, rest] = colon;
    const kind = classify(name);
    if (rest === '') {
      // `Plan:` alone on its line; an unknown `Some Heading:` too, when it looks like one (short, capitalised).
      if (kind !== 'generic' || (/^[A-Z]/.test(name) && name.split(/\s+/).length <= 5)) {
        return { name, level: 0, rest, kind, announces: true };
      }
      return undefined;
    }
    // `Labs: A1c in 3 months` inside a plan is a line of the plan, not a new section.
    if (inlineHeading.test(normalised(name))) return { name, level: 0, rest, kind, announces: true };
    return undefined;
  }
  // A known section name alone on its line (`Assessment & Plan`, `Physical Exam`).
  const bare = classify(line);
  if (bare !== 'generic' && line.length <= 60) {
    return { name: line, level: 0, rest: '', kind: bare, announces: true };
  }
  const capitals = line.replace(/:$/, '').trim();
  if (/[A-Z]{2}/.test(capitals) && !/[a-z]/.test(capitals) && /^[A-Z][A-Z0-9 &/+,()'-]*$/.test(capitals)) {
    if (capitals.split(/\s+/).length <= 8) {
      return { name: capitals, level: 0, rest: '', kind: classify(capitals), announces: line.endsWith(':') };
    }
  }
  return undefined;
}

/** Words a note's sign-off starts with: not a conclusion, whatever section it sits in. */
const signOff =
  /^(?:electronically signed|signed(?: by)?[: ]|dictated|transcribed|cc:|this (?:note|document|report) (?:was|has been)|i have (?:personally )?(?:seen|examined|reviewed)|attestation)/i;

const bullet = /^\s*(?:[-*+\u2022\u25aa\u25cf]|\u2013)\s+/;
/** A numbered list item (`1. bronchitis`, `2) fluids`): a list item that keeps its number. */
const numbered = /^\s*\d{1,2}[.)]\s+\S/;

/**
 * Lines as one line of text: list items joined with semicolons (a list's repeats counted once, "×3"), a
 * sentence's end marked where lines break without punctuation.
 */
function joined(lines: string[]): string {
  const pieces: { text: string; listItem: boolean }[] = [];
  for (const raw of lines) {
    const text = raw.replace(bullet, '').replace(/\s+/g, ' ').trim();
    if (text === '') continue;
    const listItem = bullet.test(raw) || numbered.test(raw);
    const previous = pieces.at(-1);
    if (listItem && previous?.listItem) {
      const repeat = pieces.findLast((piece) => piece.listItem && piece.text.replace(/ ×\d+$/, '') === text);
      const sameList = repeat && pieces.slice(pieces.indexOf(repeat)).every((piece) => piece.listItem);
      if (repeat && sameList) {
        const times = Number(/ ×(\d+)$/.exec(repeat.text)?.[1] ?? 1) + 1;
        repeat.text = `${text} ×${times}`;
        continue;
      }
    }
    pieces.push({ text, listItem });
  }
  // A lead-in (`The following procedures were conducted:`) with nothing of its own after it says nothing.
  const said = pieces.filter(
    (piece, index) =>
      !piece.text.endsWith(':') || (pieces[index + 1] && !pieces[index + 1].text.endsWith(':')),
  );
  let result = '';
  said.forEach((piece, index) => {
    if (index === 0) {
      result = piece.text;
      return;
    }
    const previous = said[index - 1];
    const separator = /[.!?;:,]$/.test(previous.text)
      ? ' '
      : piece.listItem && previous.listItem
        ? '; '
        : !/^[A-Z0-9]/.test(piece.text)
          ? ' '
          : '. ';
    result += `${separator}${piece.text}`;
  });
  return result;
}

/** At most maxCharacters, cut at a word with an ellipsis. */
function bounded(text: string, maxCharacters: number): string {
  if (text.length <= maxCharacters) return text;
  const cut = text.slice(0, maxCharacters - 1);
  const atWord = cut.replace(/\s+\S*$/, '');
  return `${(atWord.length > maxCharacters / 2 ? atWord : cut).trimEnd()}…`;
}

interface Section {
  heading?: Heading;
  lines: string[];
}

/** The note as a list of sections, each a heading (or none, for text before the first) and its lines. */
function sectionsOf(noteText: string): Section[] {
  const sections: Section[] = [{ lines: [] }];
  for (const line of noteText.replace(/\r\n?/g, '\n').split('\n')) {
    const heading = headingOf(line);
    if (heading) {
      sections.push({ heading, lines: heading.rest ? [heading.rest] : [] });
    } else {
      (sections.at(-1) as Section).lines.push(line);
    }
  }
  return sections;
}

/** The note's assessment and plan: every plan section with what it holds, up to the next other section. */
function planText(sections: Section[]): string {
  const parts: string[] = [];
  let capture: { level: number } | undefined;
  let pendingLabel = '';
  for (const { heading, lines } of sections) {
    if (!heading) continue;
    if (heading.kind === 'plan') {
      // A part of the conclusion (`## Plan` after `# Assessment and Plan`, `Plan:` after `Assessment:`).
      const text = joined(lines.filter((line) => !signOff.test(line.trim())));
      const label = parts.length > 0 ? `${heading.name.replace(/:$/, '')}: ` : '';
      if (text) parts.push(`${label}${text}`);
      // An empty `## Plan` whose content sits under sub-headings: its name goes before the first of them.
      pendingLabel = text ? '' : label;
      if (!capture) capture = { level: heading.level };
      continue;
    }
    if (!capture) continue;
    const nested = heading.level > 0 && capture.level > 0 && heading.level > capture.level;
    if (heading.kind === 'other' && !nested) {
      capture = undefined;
      continue;
    }
    if (heading.level > 0 && capture.level > 0 && !nested && heading.kind === 'generic') {
      // A peer markdown section that is not part of the plan (`# Orders` after `# Assessment`).
      capture = undefined;
      continue;
    }
    // A sub-heading inside the plan (a problem name, `Labs`): kept as part of its text.
    const text = joined(lines.filter((line) => !signOff.test(line.trim())));
    // A sub-heading with nothing under it says nothing (its items may have been left out by the site's policy).
    if (!text && heading.announces) continue;
    // Nor does one followed at once by another lead-in (`...conducted:` then `...placed on a careplan:`).
    const firstLine = lines.find((line) => line.trim() !== '')?.trim() ?? '';
    if (heading.announces && firstLine.endsWith(':')) {
      parts.push(`${pendingLabel}${text}`);
      pendingLabel = '';
      continue;
    }
    const name = heading.name.replace(/:$/, '');
    parts.push(`${pendingLabel}${text ? `${name}${/[.!?]$/.test(name) ? '' : ':'} ${text}` : name}`);
    pendingLabel = '';
  }
  return parts.length > 0 ? joined(parts) : '';
}

/** Paragraphs of some lines: runs of non-blank lines. */
function paragraphsOf(lines: string[]): string[][] {
  const paragraphs: string[][] = [];
  let current: string[] = [];
  for (const line of lines) {
    if (line.trim() === '') {
      if (current.length > 0) paragraphs.push(current);
      current = [];
    } else current.push(line);
  }
  if (current.length > 0) paragraphs.push(current);
  return paragraphs;
}

/** A short closing paragraph says little alone: the one before it comes too. */
const shortParagraph = 120;

/**
 * Sections that list what the record holds anyway (medications, allergies, history lists, results): their
 * last lines are not what a note concludes, and the draft has them from the structured record already.
 */
const recordListSection =
  /^(?:medications?|current medications|meds|allergies|allergies and medications|immunizations|problem list|active problems|pmh|past medical history|psh|past surgical history|fh|family history|sh|social history|vitals?|vital signs|labs?|laborator(?:y|ies)(?: results)?|results|imaging|radiology|signature|attestation|electronically signed(?: by)?|signed(?: by)?)$/;

/** Sections that say why the visit happened. */
const reasonSection = /^(?:cc|chief complaints?|reason for (?:visit|consultation|referral))$/;

/** The note's last paragraph(s) of content, leaving out a sign-off and record lists, with their heading. */
function lastParagraphs(sections: Section[]): { text: string; section?: string } | undefined {
  for (const { heading, lines } of [...sections].reverse()) {
    if (heading && recordListSection.test(normalised(heading.name))) continue;
    const paragraphs = paragraphsOf(lines).filter((paragraph) => !signOff.test(paragraph[0].trim()));
    const last = paragraphs.at(-1);
    if (!last) continue;
    const chosen =
      joined(last).length < shortParagraph && paragraphs.length > 1
        ? [paragraphs.at(-2) as string[], last]
        : [last];
    const text = joined(chosen.flat());
    if (text) return { text, section: heading?.name };
  }
  return undefined;
}

/** The reason for the visit, for a note whose assessment and plan were left empty. */
function reasonForVisit(sections: Section[]): { text: string; section: string } | undefined {
  for (const { heading, lines } of sections) {
    if (!heading || !reasonSection.test(normalised(heading.name))) continue;
    const text = joined(lines.filter((line) => !signOff.test(line.trim())));
    if (text) return { text, section: heading.name };
  }
  return undefined;
}

/**
 * What a note concludes: its assessment and plan; for a note whose plan sections are there but empty, the
 * reason for the visit; otherwise (no plan sections) its last paragraph(s). Undefined only for a note with no
 * text at all besides record lists.
 */
export function noteConclusion(
  noteText: string,
  maxCharacters = defaultConclusionCharacters,
): NoteConclusion | undefined {
  const sections = sectionsOf(noteText);
  const plan = planText(sections);
  if (plan) return { kind: 'assessment-and-plan', text: bounded(plan, maxCharacters) };
  const planWasEmpty = sections.some(({ heading }) => heading?.kind === 'plan');
  const reason = planWasEmpty ? reasonForVisit(sections) : undefined;
  if (reason)
    return { kind: 'reason-for-visit', text: bounded(reason.text, maxCharacters), section: reason.section };
  const closing = lastParagraphs(sections);
  if (!closing) return undefined;
  return { kind: 'last-paragraphs', text: bounded(closing.text, maxCharacters), section: closing.section };
}

/**
 * A note's conclusion as the draft's "assessment and plan" line says it: the plan itself, or what stands in for
 * it marked as such ("Reason for visit (Chief Complaint): ...", "Last paragraph (Hospital Course):
 * ..."), so a reader knows which one it is.
 */
export function assessmentAndPlan(
  noteText: string,
  maxCharacters = defaultConclusionCharacters,
): string | undefined {
  const conclusion = noteConclusion(noteText, maxCharacters);
  if (!conclusion) return undefined;
  if (conclusion.kind === 'assessment-and-plan') return conclusion.text;
  const label =
    conclusion.kind === 'reason-for-visit'
      ? // Not "no plan written": the site's content policy may have taken out what the plan said.
        `Reason for visit${/^reason for visit$/i.test(conclusion.section ?? '') ? '' : ` (${conclusion.section})`}: `
      : conclusion.section
        ? `Last paragraph (${conclusion.section}): `
        : 'Last paragraph: ';
  return `${label}${bounded(conclusion.text, Math.max(maxCharacters - label.length, 20))}`;
}
