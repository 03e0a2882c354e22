import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Estimate } from './aggregate.ts';
import { factCategories } from './labelled-set.ts';
import type { EvalReport } from './run-eval.ts';

/**
 * The report three ways: JSON for CI, Markdown for a pull request or a wiki, and one self-contained
 * HTML page (inline CSS and SVG charts, nothing fetched) for the people deciding on go-live. Reports
 * hold figures only, never patient data.
 */
export function writeReports(
  report: EvalReport,
  folder: string,
): { json: string; markdown: string; html: string } {
  mkdirSync(folder, { recursive: true });
  const files = {
    json: path.join(folder, 'report.json'),
    markdown: path.join(folder, 'report.md'),
    html: path.join(folder, 'report.html'),
  };
  writeFileSync(files.json, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(files.markdown, markdownReport(report));
  writeFileSync(files.html, htmlReport(report));
  return files;
}

function share(estimate: Estimate): string {
  if (estimate.value === null) return 'n/a';
  const percent = (value: number | null) => (value === null ? '?' : (value * 100).toFixed(1));
  return `${percent(estimate.value)}% (${percent(estimate.low)}-${percent(estimate.high)}, n=${estimate.n})`;
}

function amount(estimate: Estimate, digits = 0): string {
  if (estimate.value === null) return 'n/a';
  const format = (value: number | null) => (value === null ? '?' : value.toFixed(digits));
  return `${format(estimate.value)} (${format(estimate.low)}-${format(estimate.high)})`;
}

function yesNo(value: boolean | null): string {
  return value === null ? 'n/a' : value ? 'met' : 'NOT met';
}

export function markdownReport(report: EvalReport): string {
  const lines: string[] = [
    '# Draft evaluation',
    '',
    `Generated ${report.generatedAt} from ${report.source}.`,
    `Labelled set: ${report.labelledSet.drafts} drafts of ${report.labelledSet.patients} patients; facts: ${factCategories
      .map((category) => `${category} ${report.labelledSet.facts[category]}`)
      .join(
        ', ',
      )}${report.labelledSet.skippedDeceased ? `; ${report.labelledSet.skippedDeceased} cases skipped (patient deceased)` : ''}.`,
    `Intervals: ${report.intervals}.`,
    '',
    '## Configurations',
    '',
    '| configuration | patients | drafts (failed, fallback) | fact recall | statement support | wrong-patient citations (written) | nudge agreement (extra) | prompt tokens / draft | completion tokens / draft | model calls / draft | seconds / draft |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...report.configurations.map(
      (figures) =>
        `| ${figures.name} | ${figures.patients} | ${figures.drafts} (${figures.failedDrafts}, ${figures.fallbackDrafts}) | ${share(figures.factRecall.overall)} | ${share(figures.statementSupport)} | ${figures.wrongPatientCitations} (${figures.wrongPatientCitationsWritten}) | ${share(figures.nudgeAgreement)} (${figures.nudgeAgreement.extra}) | ${amount(figures.promptTokens)} | ${amount(figures.completionTokens)} | ${amount(figures.modelCalls, 1)} | ${amount(figures.secondsPerDraft, 2)} |`,
    ),
    '',
    '## Fact recall by category',
    '',
    `| configuration | ${factCategories.join(' | ')} |`,
    `| --- | ${factCategories.map(() => '---').join(' | ')} |`,
    ...report.configurations.map(
      (figures) =>
        `| ${figures.name} | ${factCategories.map((category) => share(figures.factRecall.byCategory[category])).join(' | ')} |`,
    ),
    '',
    '## Verifier removals',
    '',
    '| configuration | no citation | unknown citation | other patient | support counting removals |',
    '| --- | --- | --- | --- | --- |',
    ...report.configurations.map((figures) => {
      const removed = figures.statementSupport.removedByVerifier;
      const including = figures.statementSupport.includingRemovals;
      return `| ${figures.name} | ${removed['no-citation'] ?? 0} | ${removed['unknown-citation'] ?? 0} | ${removed['other-patient'] ?? 0} | ${including === null ? 'n/a' : `${(including * 100).toFixed(1)}%`} |`;
    }),
    '',
    '## Unwanted lines (target 0) and notes summarised',
    '',
    '| configuration | after the encounter | social finding as a problem | duplicates | sensitive against policy | total | notes cited / draft |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...report.configurations.map((figures) => {
      const unwanted = figures.unwantedLines;
      return `| ${figures.name} | ${unwanted.afterEncounter} | ${unwanted.socialAsProblem} | ${unwanted.duplicates} | ${unwanted.sensitiveAgainstPolicy} | ${unwanted.total} | ${amount(figures.notesSummarisedPerDraft, 1)} |`;
    }),
    '',
    '## Benchmark: the patient with the most notes',
    '',
    'Target (issue 15): fact recall of at least 0.95 of the structured and of the planted facts with the scripted cooperative model, at no more than 1/50 of the naive tokens, in at most chunks + 2 model calls.',
    '',
    '| configuration | notes | naive tokens | sent tokens | naive / sent | model calls | chunks | structured recall | planted recall | recall target | 1/50 target | calls target |',
    '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
    ...report.benchmark.map(
      (figures) =>
        `| ${figures.configuration} | ${figures.notes} | ${figures.naiveTokens} | ${figures.sentTokens} | ${figures.naiveOverSent ?? 'n/a'} | ${figures.modelCalls} | ${figures.chunks ?? 'n/a'} | ${figures.structuredRecall ?? 'n/a'} | ${figures.plantedRecall ?? 'n/a'} | ${yesNo(figures.targets.recallAtLeast095)} | ${yesNo(figures.targets.atMostAFiftiethOfNaive)} | ${yesNo(figures.targets.callsWithinChunksPlusTwo)} |`,
    ),
    '',
    '## Method',
    '',
    ...report.method.map((line) => `- ${line}`),
    '',
  ];
  return lines.join('\n');
}

function escapeHtml(text: string): string {
  return text.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`);
}

const palette = ['#1f77b4', '#d62728', '#2ca02c', '#9467bd', '#ff7f0e', '#8c564b'];

/** Grouped horizontal bars of shares (0-1) with interval whiskers, one group per row label. */
function shareChart(title: string, rows: string[], series: { name: string; values: Estimate[] }[]): string {
  const barHeight = 12;
  const groupHeight = series.length * (barHeight + 2) + 10;
  const left = 120;
  const width = 420;
  const height = rows.length * groupHeight + 40;
  const x = (value: number) => left + value * width;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${left + width + 40}" height="${height}" role="img" aria-label="${escapeHtml(title)}">`,
    `<text x="0" y="14" font-weight="bold">${escapeHtml(title)}</text>`,
  ];
  for (const tick of [0, 0.25, 0.5, 0.75, 1]) {
    parts.push(
      `<line x1="${x(tick)}" x2="${x(tick)}" y1="22" y2="${height - 14}" stroke="#ddd"/>`,
      `<text x="${x(tick)}" y="${height - 2}" font-size="10" text-anchor="middle">${tick * 100}%</text>`,
    );
  }
  rows.forEach((row, rowIndex) => {
    const top = 26 + rowIndex * groupHeight;
    parts.push(`<text x="0" y="${top + groupHeight / 2}" font-size="12">${escapeHtml(row)}</text>`);
    series.forEach((entry, seriesIndex) => {
      const estimate = entry.values[rowIndex];
      const y = top + seriesIndex * (barHeight + 2);
      if (estimate?.value === null || estimate === undefined) {
        parts.push(`<text x="${left + 4}" y="${y + barHeight - 2}" font-size="10">n/a</text>`);
        return;
      }
      const color = palette[seriesIndex % palette.length];
      parts.push(
        `<rect x="${left}" y="${y}" width="${estimate.value * width}" height="${barHeight}" fill="${color}"><title>${escapeHtml(entry.name)}: ${share(estimate)}</title></rect>`,
      );
      if (estimate.low !== null && estimate.high !== null) {
        parts.push(
          `<line x1="${x(estimate.low)}" x2="${x(estimate.high)}" y1="${y + barHeight / 2}" y2="${y + barHeight / 2}" stroke="#000"/>`,
        );
      }
    });
  });
  parts.push('</svg>');
  return parts.join('');
}

export function htmlReport(report: EvalReport): string {
  const names = report.configurations.map((figures) => figures.name);
  const legend = names
    .map(
      (name, index) =>
        `<span class="key"><span class="swatch" style="background:${palette[index % palette.length]}"></span>${escapeHtml(name)}</span>`,
    )
    .join(' ');
  const recallChart = shareChart(
    'Fact recall by category (95% interval)',
    ['overall', ...factCategories],
    report.configurations.map((figures) => ({
      name: figures.name,
      values: [
        figures.factRecall.overall,
        ...factCategories.map((category) => figures.factRecall.byCategory[category]),
      ],
    })),
  );
  const qualityChart = shareChart(
    'Statement support and nudge agreement',
    ['statement support', 'nudge agreement'],
    report.configurations.map((figures) => ({
      name: figures.name,
      values: [figures.statementSupport, figures.nudgeAgreement],
    })),
  );
  // The Markdown tables, rendered as HTML tables (cells escaped).
  const tables = markdownReport(report)
    .split('\n\n')
    .map((block) => {
      const rows = block.split('\n').filter((line) => line.startsWith('|') && !/^\|\s*---/.test(line));
      if (rows.length === 0) {
        if (block.startsWith('## ')) return `<h2>${escapeHtml(block.slice(3))}</h2>`;
        if (block.startsWith('# ')) return '';
        if (block.startsWith('- '))
          return `<ul>${block
            .split('\n')
            .map((line) => `<li>${escapeHtml(line.slice(2))}</li>`)
            .join('')}</ul>`;
        return `<p>${escapeHtml(block)}</p>`;
      }
      const cells = (line: string) =>
        line
          .slice(1, -1)
          .split('|')
          .map((cell) => cell.trim());
      const [head, ...body] = rows;
      return `<table><thead><tr>${cells(head)
        .map((cell) => `<th>${escapeHtml(cell)}</th>`)
        .join('')}</tr></thead><tbody>${body
        .map(
          (line) =>
            `<tr>${cells(line)
              .map((cell) => `<td>${escapeHtml(cell)}</td>`)
              .join('')}</tr>`,
        )
        .join('')}</tbody></table>`;
    })
    .join('\n');
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>Draft evaluation</title>
<style>
body{font-family:system-ui,sans-serif;margin:2rem;max-width:1200px;color:#222}
table{border-collapse:collapse;margin:1rem 0;font-size:13px}
th,td{border:1px solid #ccc;padding:4px 6px;text-align:left}
th{background:#f3f3f3}
.key{margin-right:1rem}.swatch{display:inline-block;width:10px;height:10px;margin-right:4px}
figure{margin:1rem 0}
</style>
</head>
<body>
<h1>Draft evaluation</h1>
<p>${legend}</p>
<figure>${recallChart}</figure>
<figure>${qualityChart}</figure>
${tables}
</body>
</html>
`;
}
