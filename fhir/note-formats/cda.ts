import { Parser } from 'htmlparser2';
import { htmlToText } from './html.ts';

/**
 * A C-CDA document (HL7 CDA R2, as US hospitals exchange notes) as text: each section's title as a markdown
 * heading (nested sections one level deeper) followed by its narrative block. The sections a plan is read from
 * are named by their LOINC code whatever their title says, so the section finder always recognises them.
 * The parser expands no DTD or external entities, so a document cannot make it read files or grow without bound.
 */

/** LOINC section codes whose content is the assessment and plan, under the name the section finder knows. */
const planSectionNames: Record<string, string> = {
  '51847-2': 'Assessment and Plan',
  '18776-5': 'Plan of Care',
  '51848-0': 'Assessment',
};

interface OpenSection {
  level: number;
  code?: string;
  codeName?: string;
  title: string;
  narrative?: string;
  written: boolean;
}

/** Whether this XML is a CDA document (its root element is ClinicalDocument, in any namespace prefix). */
export function isClinicalDocument(xml: string): boolean {
  return /<(?:[A-Za-z_][\w.-]*:)?ClinicalDocument[\s>/]/.test(xml.slice(0, 4000));
}

function localName(name: string): string {
  const colon = name.indexOf(':');
  return colon >= 0 ? name.slice(colon + 1) : name;
}

/** The text of a CDA document: sections as headings and narrative; a non-XML body's text as it is. */
export function cdaToText(xml: string): string {
  const output: string[] = [];
  const elements: string[] = [];
  const sections: OpenSection[] = [];
  let titleOf: OpenSection | undefined;
  let narrativeStart: number | undefined;
  let nonXmlBody: { mediaType: string; representation: string; start: number } | undefined;

  const write = (section: OpenSection) => {
    if (section.written) return;
    section.written = true;
    const name =
      (section.code && planSectionNames[section.code]) ||
      section.title.trim() ||
      section.codeName ||
      'Section';
    output.push(`${'#'.repeat(Math.min(section.level, 6))} ${name.replace(/\s+/g, ' ')}`);
    const narrative = section.narrative ? htmlToText(section.narrative, { xmlMode: true }) : '';
    output.push(narrative, '');
  };

  const parser: Parser = new Parser(
    {
      onopentag(name, attributes) {
        const tag = localName(name);
        const parent = elements.at(-1);
        const section = sections.at(-1);
        elements.push(tag);
        if (narrativeStart !== undefined || nonXmlBody) return;
        if (tag === 'section') {
          sections.push({ level: sections.length + 1, title: '', written: false });
        } else if (parent === 'section' && section && tag === 'code') {
          section.code = attributes.code;
          section.codeName = attributes.displayName;
        } else if (parent === 'section' && section && tag === 'title') {
          titleOf = section;
        } else if (parent === 'section' && section && tag === 'text') {
          narrativeStart = parser.endIndex + 1;
        } else if (parent === 'section' && section && tag === 'component') {
          // A nested section follows: this section's heading and narrative come first.
          write(section);
        } else if (parent === 'nonXMLBody' && tag === 'text') {
          nonXmlBody = {
            mediaType: (attributes.mediaType ?? 'text/plain').toLowerCase(),
            representation: (attributes.representation ?? 'TXT').toUpperCase(),
            start: parser.endIndex + 1,
          };
        }
      },
      ontext(text) {
        if (titleOf && narrativeStart === undefined) titleOf.title += text;
      },
      onclosetag(name) {
        const tag = localName(name);
        elements.pop();
        if (narrativeStart !== undefined) {
          if (tag === 'text' && elements.at(-1) === 'section') {
            const section = sections.at(-1) as OpenSection;
            section.narrative = xml.slice(narrativeStart, Math.max(narrativeStart, parser.startIndex));
            narrativeStart = undefined;
          }
          return;
        }
        if (nonXmlBody) {
          if (tag === 'text' && elements.at(-1) === 'nonXMLBody') {
            output.push(
              nonXmlBodyText(
                xml.slice(nonXmlBody.start, Math.max(nonXmlBody.start, parser.startIndex)),
                nonXmlBody,
              ),
            );
            nonXmlBody = undefined;
          }
          return;
        }
        if (tag === 'title' && titleOf) titleOf = undefined;
        if (tag === 'section') write(sections.pop() as OpenSection);
      },
    },
    { xmlMode: true, decodeEntities: true, recognizeSelfClosing: true },
  );
  parser.end(xml);
  return output
    .join('\n')
    .replace(/\n{3,}/g, '\n\n')
    .trim();
}

/** The characters of an XML fragment, entities decoded, line breaks kept. */
function xmlCharacterData(content: string): string {
  let text = '';
  const parser = new Parser(
    {
      ontext(data) {
        text += data;
      },
    },
    { xmlMode: true, decodeEntities: true },
  );
  parser.end(content);
  return text;
}

/** The unstructured body of a CDA document, when it is text; other media (a scanned PDF) give no text here. */
function nonXmlBodyText(content: string, body: { mediaType: string; representation: string }): string {
  const raw =
    body.representation === 'B64'
      ? Buffer.from(content.replace(/\s+/g, ''), 'base64').toString('utf-8')
      : xmlCharacterData(content);
  if (body.mediaType.startsWith('text/html')) return htmlToText(raw);
  if (body.mediaType.startsWith('text/plain')) return raw;
  return '';
}
