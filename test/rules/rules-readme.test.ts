import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ruleDocumentSchema, ruleTriggers } from '../../src/rules/rule-schema.ts';
import { starterRulesDirectory } from './helpers.ts';

/** Issue 13.15: the rules README is what teams write rules from; its field table must match the schema. */
const readme = readFileSync(path.join(starterRulesDirectory, 'README.md'), 'utf8');

/** Cells of a Markdown table row, `\|` being a pipe inside a cell. */
function cells(row: string): string[] {
  return row
    .trim()
    .replace(/^\||\|$/g, '')
    .split(/(?<!\\)\|/)
    .map((cell) => cell.trim());
}

const table = (() => {
  const lines = readme.split('\n');
  const start = lines.findIndex((line) => /^\|\s*field\s*\|/.test(line));
  const end = lines.findIndex((line, index) => index > start && !line.startsWith('|'));
  return lines.slice(start, end);
})();

describe('config/rules/README.md', () => {
  it("has a field table whose every row has the header's columns (a | inside a cell is escaped)", () => {
    expect(table.length).toBeGreaterThan(10);
    const width = cells(table[0]).length;
    for (const row of table) expect(cells(row), row).toHaveLength(width);
  });

  it('documents every field of a rule file, and the triggers as a list of the accepted values', () => {
    const documented = table
      .slice(2)
      .flatMap((row) =>
        [...cells(row)[0].matchAll(/`([a-zA-Z]+)(?:\.[a-zA-Z]+)?`/g)].map((match) => match[1]),
      );
    for (const field of Object.keys(ruleDocumentSchema.shape)) expect(documented, field).toContain(field);
    const triggerRow = table.find((row) => cells(row)[0] === '`trigger`') ?? '';
    expect(triggerRow).toContain('a list');
    for (const trigger of ruleTriggers) expect(triggerRow).toContain(`\`${trigger}\``);
  });

  it('says where cql/ lives and that model info and FHIRHelpers are not shipped', () => {
    expect(readme).toContain('`<rules.directory>/cql/`');
    expect(readme).toMatch(/Model info and FHIRHelpers are not shipped/);
    expect(readme).toContain('github.com/cqframework/clinical_quality_language');
  });
});
