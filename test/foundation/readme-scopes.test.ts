import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';
import { defaultBackendScopes, defaultLaunchScopes } from '../../src/config/auth-config.ts';

/**
 * An EHR registers the scopes the README lists, and refuses a launch asking for anything more
 * (`invalid_scope`): the lists shown there must be the code's defaults, word for word.
 */
const readme = readFileSync(
  path.join(path.dirname(fileURLToPath(import.meta.url)), '../../README.md'),
  'utf8',
);

function listedScopes(label: string): string[] {
  const pattern = new RegExp(`${label}: \`([^\`]+)\``, 'g');
  const lists = [...readme.matchAll(pattern)].map((match) => match[1].split(/\s+/).filter(Boolean));
  // Exactly one list under that label: a second, stale copy elsewhere would mislead just the same.
  expect(lists, `README lists under "${label}"`).toHaveLength(1);
  return lists[0];
}

describe('README scope lists', () => {
  it('shows the default backend scopes exactly', () => {
    expect(listedScopes('Default backend scopes')).toEqual(defaultBackendScopes.split(' '));
  });

  it('shows the default launch scopes exactly', () => {
    expect(listedScopes('Default launch scopes')).toEqual(defaultLaunchScopes.split(' '));
  });
});
