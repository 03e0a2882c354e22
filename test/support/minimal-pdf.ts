/**
 * A small, valid PDF written by hand (PDF 1.4: catalog, page tree, Helvetica, one content stream per page and a
 * cross-reference table with exact byte offsets), as a hospital's document system exports a typed note. A page
 * given no lines has no text layer, as a scanned page has none: it draws a grey box instead.
 */
export function minimalPdf(pages: string[][]): Buffer {
  const objects: string[] = [];
  objects[1] = '<< /Type /Catalog /Pages 2 0 R >>';
  objects[3] = '<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>';
  const pageIds: number[] = [];
  let next = 4;
  for (const lines of pages) {
    const escaped = lines.map(
      (line) => `(${line.replace(/[()\\]/g, (character) => `\\${character}`)}) Tj T*`,
    );
    const stream =
      lines.length > 0 ? `BT /F1 11 Tf 72 720 Td 14 TL ${escaped.join(' ')} ET` : '0.5 g 72 400 468 300 re f';
    const contentId = next++;
    const pageId = next++;
    objects[contentId] = `<< /Length ${Buffer.byteLength(stream, 'latin1')} >>\nstream\n${stream}\nendstream`;
    objects[pageId] =
      `<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 3 0 R >> >> /Contents ${contentId} 0 R >>`;
    pageIds.push(pageId);
  }
  objects[2] = `<< /Type /Pages /Kids [${pageIds.map((id) => `${id} 0 R`).join(' ')}] /Count ${pageIds.length} >>`;
  let body = '%PDF-1.4\n%\xe2\xe3\xcf\xd3\n';
  const offsets: number[] = [];
  for (let id = 1; id < objects.length; id++) {
    offsets[id] = Buffer.byteLength(body, 'latin1');
    body += `${id} 0 obj\n${objects[id]}\nendobj\n`;
  }
  const crossReference = Buffer.byteLength(body, 'latin1');
  const entries = offsets.slice(1).map((offset) => `${String(offset).padStart(10, '0')} 00000 n \n`);
  body += `xref\n0 ${objects.length}\n0000000000 65535 f \n${entries.join('')}`;
  body += `trailer\n<< /Size ${objects.length} /Root 1 0 R >>\nstartxref\n${crossReference}\n%%EOF\n`;
  return Buffer.from(body, 'latin1');
}
