import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import type { Binary, DocumentReference } from 'fhir/r4.js';
import { describe, expect, it } from 'vitest';
import { noteConclusion } from '../../agents/note-sections.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { pdfToText } from '../../fhir/note-formats/pdf.ts';
import { rtfToText } from '../../fhir/note-formats/rtf.ts';
import { readNoteText, textAttachment, UnreadableNoteError } from '../../fhir/note-text.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { withOmissionNotice } from '../../src/pipeline/process-encounter-job.ts';
import { minimalPdf } from '../support/minimal-pdf.ts';
import { startFhirTestServer } from './fhir-test-server.ts';
import { create, seedChart } from './seed.ts';

/** A note with inline attachments; readNoteText needs no server for them. */
function note(...attachments: { contentType: string; data: Buffer | string }[]): DocumentReference {
  return {
    resourceType: 'DocumentReference',
    id: 'n1',
    status: 'current',
    content: attachments.map(({ contentType, data }) => ({
      attachment: { contentType, data: Buffer.from(data).toString('base64') },
    })),
  };
}

const noServer = new FhirClient({ baseUrl: 'http://127.0.0.1:9/fhir' });

/**
 * An RTF progress note as Epic's TX Text Control writes it: font, colour and style tables, a generator
 * stamp, a running header with the patient's identifiers, a picture, a hyperlink field, a table, \tab and
 * \line, Windows-1252 bytes (\'e9) and Unicode escapes with their ANSI fallback (\u8212?).
 */
const epicRtf = [
  '{\\rtf1\\ansi\\ansicpg1252\\uc1\\deff0\\deflang1033',
  '{\\fonttbl{\\f0\\fnil\\fcharset0\\fprq2 Arial;}{\\f1\\fswiss\\fcharset0\\fprq2 Segoe UI;}{\\f2\\froman\\fcharset2 Symbol;}}',
  '{\\colortbl;\\red0\\green0\\blue0;\\red255\\green255\\blue255;\\red31\\green73\\blue125;}',
  '{\\stylesheet{\\s0\\snext0\\f1\\fs20 Normal;}{\\s1\\sbasedon0\\snext0\\b\\f1\\fs24 heading 1;}}',
  '{\\*\\generator TX_RTF32 26.0.700.500;}',
  '\\paperw12240\\paperh15840\\margl1440\\margr1440\\margt1440\\margb1440',
  '{\\header\\pard\\plain\\f1\\fs16 DOE, JANE  MRN 00012345  DOB 01/02/1950\\par}',
  '{\\info{\\author EPIC USER}{\\title Progress Note}}',
  '\\pard\\plain\\s1\\b\\f1\\fs24 PROGRESS NOTE\\b0\\par',
  "\\pard\\plain\\f1\\fs20 {\\b Subjective:}\\tab Follow-up of caf\\'e9-au-lait macules \\u8212? no new lesions.\\par",
  '{\\pict\\wmetafile8\\picw2117\\pich529\\picwgoal1200\\pichgoal300 0100090000035a0000000000310000000000050000000b0200000000}',
  '\\par {\\b Objective:}\\tab BP 128/82.\\line Weight 81\\~kg.\\par',
  '\\trowd\\trgaph108\\cellx3000\\cellx6000 A1c\\cell 7.2 %\\cell\\row',
  '\\pard {\\b ASSESSMENT AND PLAN:}\\par',
  '1. Type 2 diabetes \\endash  above goal; increase metformin to 1000\\~mg twice daily.\\par',
  '2. See {\\field{\\*\\fldinst HYPERLINK "https://guidelines.example/ada"}{\\fldrslt ADA guideline}} \\u8211\\\'96 recheck A1c in 3 months.\\par',
  '{\\*\\bkmkstart end}{\\*\\bkmkend end}}',
].join('\n');

describe('RTF notes (Epic)', () => {
  it('reads the text and nothing of the markup: no control words, tables, pictures, headers or field codes', async () => {
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'application/rtf', data: epicRtf }),
    )) as string;
    expect(text).toBe(
      [
        'PROGRESS NOTE',
        'Subjective:\tFollow-up of café-au-lait macules — no new lesions.',
        // The empty paragraph the picture sat in.
        '',
        'Objective:\tBP 128/82.',
        'Weight 81\u00a0kg.',
        'A1c\t7.2 %',
        'ASSESSMENT AND PLAN:',
        '1. Type 2 diabetes – above goal; increase metformin to 1000\u00a0mg twice daily.',
        '2. See ADA guideline – recheck A1c in 3 months.',
      ].join('\n'),
    );
    for (const leak of ['\\', '{', 'Arial', 'TX_RTF32', 'DOE, JANE', 'MRN', '0100090000', 'HYPERLINK', '?']) {
      expect(text).not.toContain(leak);
    }
    // text/rtf is the same format.
    expect(await readNoteText(noServer, note({ contentType: 'text/rtf', data: epicRtf }))).toBe(text);
  });

  it('honours the document code page, \\ucN skips and symbol fonts', () => {
    const cyrillic =
      "{\\rtf1\\ansi\\ansicpg1251{\\fonttbl{\\f0\\fcharset204 Arial;}}\\f0 \\'cf\\'eb\\'e0\\'ed\\par}";
    expect(rtfToText(Buffer.from(cyrillic))).toBe('План');
    expect(rtfToText(Buffer.from("{\\rtf1\\ansi\\uc2 a\\u8212\\'97\\'97b\\uc0\\u8212 c}"))).toBe('a—b—c');
    // Symbol and Wingdings code points as the characters they draw (a bullet, a ticked box).
    const symbols =
      "{\\rtf1\\ansi\\deff0{\\fonttbl{\\f0 Arial;}{\\f1\\fcharset2 Symbol;}{\\f2\\fcharset2 Wingdings;}}\\f1 \\'b7\\f0  foot exam \\f2 \\'fe\\f0  done}";
    expect(rtfToText(Buffer.from(symbols))).toBe('• foot exam 🗹 done');
  });

  it('gives the plan to the section finder', async () => {
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'application/rtf', data: epicRtf }),
    )) as string;
    expect(noteConclusion(text)?.text).toBe(
      '1. Type 2 diabetes – above goal; increase metformin to 1000 mg twice daily. 2. See ADA guideline – recheck A1c in 3 months.',
    );
  });

  it('refuses what is not RTF, and says so instead of showing it', async () => {
    await expect(
      readNoteText(noServer, note({ contentType: 'application/rtf', data: 'Plan: <b>not rtf</b>' })),
    ).rejects.toMatchObject({ name: 'UnreadableNoteError', reason: 'unreadable' });
  });
});

const htmlNote = `<!DOCTYPE html>
<html><head><title>DOE, JANE</title><style>h2 { color: navy }</style><script>track("x")</script></head>
<body>
<h1>Progress&nbsp;Note</h1>
<p>Seen for <b>caf&eacute;-au-lait</b> macules &#8212; no new lesions &amp; no itch.<br>Mother present.</p>
<div><h2>Objective</h2><table><tr><th>Test</th><th>Value</th></tr><tr><td>A1c</td><td>7.2&#x25;</td></tr></table></div>
<h2>Assessment &amp; Plan</h2>
<ol><li>Type 2 diabetes &lt;above goal&gt;: increase metformin.</li><li>Recheck A1c in 3&#160;months.</li></ol>
<!-- internal: do not show -->
<p>Electronically signed by Dr. Example</p>
</body></html>`;

describe('HTML notes', () => {
  it('decodes entities (named and numeric), puts blocks on their own lines, numbers ordered lists and keeps headings as headings', async () => {
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'text/html; charset=utf-8', data: htmlNote }),
    )) as string;
    expect(text).toBe(
      [
        '# Progress\u00a0Note',
        'Seen for café-au-lait macules — no new lesions & no itch.',
        'Mother present.',
        '',
        '## Objective',
        'Test\tValue',
        'A1c\t7.2%',
        '',
        '## Assessment & Plan',
        '1. Type 2 diabetes <above goal>: increase metformin.',
        '2. Recheck A1c in 3\u00a0months.',
        '',
        'Electronically signed by Dr. Example',
      ].join('\n'),
    );
    expect(noteConclusion(text)?.text).toBe(
      '1. Type 2 diabetes <above goal>: increase metformin. 2. Recheck A1c in 3 months.',
    );
  });
});

/** A C-CDA Progress Note (LOINC 11506-3) with the sections the standard names. */
const cdaNote = `<?xml version="1.0" encoding="UTF-8"?>
<?xml-stylesheet type="text/xsl" href="CDA.xsl"?>
<ClinicalDocument xmlns="urn:hl7-org:v3" xmlns:sdtc="urn:hl7-org:sdtc">
  <templateId root="2.16.840.1.113883.10.20.22.1.9" extension="2015-08-01"/>
  <code code="11506-3" codeSystem="2.16.840.1.113883.6.1" displayName="Progress note"/>
  <title>Progress Note</title>
  <recordTarget><patientRole><patient><name><given>Jane</given><family>Doe</family></name></patient></patientRole></recordTarget>
  <component><structuredBody>
    <component><section>
      <templateId root="2.16.840.1.113883.10.20.22.2.65"/>
      <code code="10164-2" codeSystem="2.16.840.1.113883.6.1" displayName="History of Present Illness"/>
      <title>History of Present Illness</title>
      <text><paragraph>Follow-up of type 2 diabetes; caf&#233; visits &amp; snacks.</paragraph></text>
    </section></component>
    <component><section>
      <templateId root="2.16.840.1.113883.10.20.22.2.9"/>
      <code code="51847-2" codeSystem="2.16.840.1.113883.6.1" displayName="Assessment and Plan"/>
      <title>A&amp;P</title>
      <text>
        <paragraph>Diabetes above goal &#x2014; A1c 7.2%.</paragraph>
        <list listType="ordered"><item>Increase metformin to 1000 mg twice daily.</item><item><content styleCode="Bold">Recheck</content> A1c in 3 months.</item></list>
      </text>
      <entry><observation classCode="OBS" moodCode="EVN"><code code="ignored"/><value xsi:type="CD" code="44054006"/></observation></entry>
    </section></component>
    <component><section>
      <code code="10160-0" codeSystem="2.16.840.1.113883.6.1"/>
      <title>Medications</title>
      <text><table><thead><tr><th>Medication</th><th>Dose</th></tr></thead><tbody><tr><td>metformin</td><td>1000 mg</td></tr></tbody></table></text>
    </section></component>
  </structuredBody></component>
</ClinicalDocument>`;

describe('C-CDA notes', () => {
  it('reads sections as headings with their narrative, the plan section named by its LOINC code', async () => {
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'application/xml', data: cdaNote }),
    )) as string;
    expect(text).toBe(
      [
        '# History of Present Illness',
        'Follow-up of type 2 diabetes; café visits & snacks.',
        '',
        '# Assessment and Plan',
        'Diabetes above goal — A1c 7.2%.',
        '',
        '1. Increase metformin to 1000 mg twice daily.',
        '2. Recheck A1c in 3 months.',
        '',
        '# Medications',
        'Medication\tDose',
        'metformin\t1000 mg',
      ].join('\n'),
    );
    // Header data (the patient's name) and coded entries are not note text.
    expect(text).not.toContain('Doe');
    expect(text).not.toContain('44054006');
    expect(noteConclusion(text)?.text).toBe(
      'Diabetes above goal — A1c 7.2%. 1. Increase metformin to 1000 mg twice daily. 2. Recheck A1c in 3 months.',
    );
  });

  it('names Plan of Care (18776-5) and Assessment (51848-0) sections for the section finder, nested sections deeper', async () => {
    const nested = `<ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody>
      <component><section><code code="51848-0"/><title>Clinical impression</title><text>Stable angina.</text>
        <component><section><code code="18776-5"/><title>Next steps</title><text><list><item>Stress test.</item></list></text></section></component>
      </section></component></structuredBody></component></ClinicalDocument>`;
    const text = (await readNoteText(noServer, note({ contentType: 'text/xml', data: nested }))) as string;
    expect(text).toBe('# Assessment\nStable angina.\n\n## Plan of Care\n- Stress test.');
    expect(noteConclusion(text)?.text).toBe('Stable angina. Plan of Care: Stress test.');
  });

  it('expands no entity declared in the document', async () => {
    const hostile = `<?xml version="1.0"?><!DOCTYPE ClinicalDocument [<!ENTITY xxe SYSTEM "file:///etc/passwd"><!ENTITY a "aaaaaaaaaa">]>
      <ClinicalDocument xmlns="urn:hl7-org:v3"><component><structuredBody><component><section><title>Plan</title>
      <text>x &xxe; &a;&a;</text></section></component></structuredBody></component></ClinicalDocument>`;
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'application/xml', data: hostile }),
    )) as string;
    expect(text).not.toContain('root:');
    expect(text).not.toContain('aaaaaaaaaa');
  });
});

describe('PDF notes', () => {
  const typed = minimalPdf([
    ['PROGRESS NOTE', 'Subjective: follow-up of type 2 diabetes.', 'Assessment and Plan:'],
    ['1. Diabetes above goal (A1c 7.2%): increase metformin.', '2. Recheck A1c in 3 months.'],
  ]);

  it('reads the text layer, page by page, and gives the plan to the section finder', async () => {
    const text = (await readNoteText(
      noServer,
      note({ contentType: 'application/pdf', data: typed }),
    )) as string;
    expect(text).toBe(
      [
        'PROGRESS NOTE',
        'Subjective: follow-up of type 2 diabetes.',
        'Assessment and Plan:',
        '',
        '1. Diabetes above goal (A1c 7.2%): increase metformin.',
        '2. Recheck A1c in 3 months.',
      ].join('\n'),
    );
    expect(noteConclusion(text)?.text).toBe(
      '1. Diabetes above goal (A1c 7.2%): increase metformin. 2. Recheck A1c in 3 months.',
    );
  });

  it('says a scanned PDF has no text layer rather than guessing', async () => {
    const scanned = minimalPdf([[], []]);
    const reading = readNoteText(noServer, note({ contentType: 'application/pdf', data: scanned }));
    await expect(reading).rejects.toBeInstanceOf(UnreadableNoteError);
    await expect(reading).rejects.toMatchObject({ reason: 'no-text-layer' });
    await expect(
      readNoteText(
        noServer,
        note({ contentType: 'application/pdf', data: Buffer.from('%PDF-1.7 not really') }),
      ),
    ).rejects.toMatchObject({ reason: 'unreadable' });
  });

  it('bounds the work: bytes before parsing, pages read, and time (in a thread it can stop)', async () => {
    const long = minimalPdf([['page one'], ['page two'], ['page three']]);
    expect(await pdfToText(long, { maxBytes: 1_000_000, maxPages: 2, timeoutMs: 10_000 })).toBe(
      'page one\n\npage two\n\n[... 1 more pages not read]',
    );
    await expect(pdfToText(long, { maxBytes: 100, maxPages: 50, timeoutMs: 10_000 })).rejects.toMatchObject({
      reason: 'too-large',
    });
    // Over its time the reading thread is stopped; the next PDF gets a new one.
    await expect(pdfToText(long, { maxBytes: 1_000_000, maxPages: 50, timeoutMs: 0 })).rejects.toMatchObject({
      reason: 'timed-out',
    });
    expect(await pdfToText(long, { maxBytes: 1_000_000, maxPages: 1, timeoutMs: 10_000 })).toBe(
      'page one\n\n[... 2 more pages not read]',
    );
  });

  it('never keeps a process alive once its PDFs are read', () => {
    const module = (file: string) => JSON.stringify(pathToFileURL(path.resolve(file)).href);
    const script = `
      const { pdfToText } = await import(${module('fhir/note-formats/pdf.ts')});
      const { minimalPdf } = await import(${module('test/support/minimal-pdf.ts')});
      console.log(await pdfToText(minimalPdf([['Plan: rest.']])));`;
    const started = Date.now();
    const run = spawnSync(process.execPath, ['--input-type=module', '-e', script], {
      encoding: 'utf8',
      timeout: 25_000,
    });
    expect(run.stdout.trim()).toBe('Plan: rest.');
    expect(run.status).toBe(0);
    // The idle reader thread is stopped only after 30 s: an exit well before shows it holds nothing open.
    expect(Date.now() - started).toBeLessThan(15_000);
  });
});

describe('a note with several attachments', () => {
  it('is read from plain text first, then HTML, XML, RTF and PDF', () => {
    const pdf = { contentType: 'application/pdf', data: 'x' };
    const rtf = { contentType: 'application/rtf', data: 'x' };
    const cda = { contentType: 'application/xml', data: 'x' };
    const html = { contentType: 'text/html', data: 'x' };
    const plain = { contentType: 'text/plain; charset=utf-8', data: 'x' };
    const image = { contentType: 'image/jpeg', data: 'x' };
    const chosen = (...attachments: { contentType: string; data: string }[]) =>
      textAttachment(note(...attachments))?.contentType;
    expect(chosen(pdf, rtf, image, plain, html)).toBe(plain.contentType);
    expect(chosen(pdf, rtf, cda, html)).toBe(html.contentType);
    expect(chosen(pdf, rtf, cda)).toBe(cda.contentType);
    expect(chosen(image, pdf, rtf)).toBe(rtf.contentType);
    expect(chosen(image, pdf)).toBe(pdf.contentType);
    expect(chosen(image)).toBeUndefined();
  });
});

describe('notes of every format in a retrieved record', () => {
  it('reads RTF and PDF behind attachment URLs and lists a scanned PDF as not read, with its reason', async () => {
    const server = await startFhirTestServer({ batch: true });
    try {
      const chart = await seedChart(server.repository);
      const document = async (
        contentType: string,
        data: Buffer,
        viaBinary: boolean,
        binaryType = contentType,
      ) => {
        const binary = () =>
          create<Binary>(server.repository, {
            resourceType: 'Binary',
            contentType: binaryType,
            data: data.toString('base64'),
          });
        const attachment = viaBinary
          ? { contentType, url: `${server.baseUrl}/Binary/${(await binary()).id}` }
          : { contentType, data: data.toString('base64') };
        return create<DocumentReference>(server.repository, {
          resourceType: 'DocumentReference',
          status: 'current',
          subject: { reference: `Patient/${chart.patient.id}` },
          date: '2026-10-20T10:00:00Z',
          content: [{ attachment }],
        });
      };
      const rtf = await document('application/rtf', Buffer.from(epicRtf), true);
      const pdf = await document('application/pdf', minimalPdf([['Plan: stress test next week.']]), true);
      const inlinePdf = await document(
        'application/pdf',
        minimalPdf([['Impression: stable angina.']]),
        false,
      );
      // A document store that serves every Binary as octet-stream: the attachment's type says it is a PDF.
      const untypedPdf = await document(
        'application/pdf',
        minimalPdf([['Plan: echo in 6 months.']]),
        true,
        'application/octet-stream',
      );
      const scanned = await document('application/pdf', minimalPdf([[]]), false);
      const scannedBehindUrl = await document('application/pdf', minimalPdf([[]]), true);

      const record = await retrievePatientRecord(
        new FhirClient({ baseUrl: server.baseUrl }),
        chart.encounter,
        {
          draftIdentifierSystem: 'urn:ehr-draft-agent:draft',
        },
      );
      const textOf = (id: string | undefined) => record.notes.find((entry) => entry.id === id)?.text;
      expect(textOf(rtf.id)).toContain('1. Type 2 diabetes – above goal');
      expect(textOf(pdf.id)).toBe('Plan: stress test next week.');
      expect(textOf(inlinePdf.id)).toBe('Impression: stable angina.');
      expect(textOf(untypedPdf.id)).toBe('Plan: echo in 6 months.');
      expect(textOf(scanned.id)).toBeUndefined();
      expect(record.omitted).toEqual(
        expect.arrayContaining([
          { reference: `DocumentReference/${scanned.id}`, reason: 'no-text-layer' },
          { reference: `DocumentReference/${scannedBehindUrl.id}`, reason: 'no-text-layer' },
        ]),
      );
      expect(record.omitted).toHaveLength(2);
      // The draft tells the reviewer, by reference only.
      expect(withOmissionNotice('Summary.', record)).toBe(
        `Summary.\n\n_Not read: 2 notes were a PDF without a text layer (a scanned image?) and left out of this draft (DocumentReference/${scanned.id}, DocumentReference/${scannedBehindUrl.id})._`,
      );
    } finally {
      await server.close();
    }
  });
});
