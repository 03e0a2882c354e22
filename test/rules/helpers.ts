import { cpSync, mkdirSync, mkdtempSync, writeFileSync } from 'node:fs';
import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import express from 'express';
import { createRulesProgram } from '../../src/cli/rules.ts';
import { sandboxRouter } from '../../src/http/sandbox-routes.ts';
import type { RuleSetSource } from '../../src/rules/rule-loader.ts';
import type { SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';

export const starterRulesDirectory = path.resolve('config/rules');

export function starterSource(overrides: Partial<RuleSetSource> = {}): RuleSetSource {
  return {
    directory: starterRulesDirectory,
    valueSetFile: path.join(starterRulesDirectory, 'valuesets.json'),
    defaultSuppressionDays: 90,
    perEncounterCap: 5,
    ...overrides,
  };
}

/** A scratch copy of the starter rules (with fixtures and value sets) that a test may break. */
export function copyOfStarterRules(): RuleSetSource {
  const directory = mkdtempSync(path.join(tmpdir(), 'rules-'));
  cpSync(starterRulesDirectory, directory, { recursive: true });
  return starterSource({ directory, valueSetFile: path.join(directory, 'valuesets.json') });
}

/** A folder with only the given files (relative path -> text) plus the starter value sets. */
export function ruleFolder(files: Record<string, string>): RuleSetSource {
  const directory = mkdtempSync(path.join(tmpdir(), 'rules-'));
  cpSync(path.join(starterRulesDirectory, 'valuesets.json'), path.join(directory, 'valuesets.json'));
  cpSync(path.join(starterRulesDirectory, 'fixtures'), path.join(directory, 'fixtures'), { recursive: true });
  for (const [name, text] of Object.entries(files)) {
    const file = path.join(directory, name);
    mkdirSync(path.dirname(file), { recursive: true });
    writeFileSync(file, text);
  }
  return starterSource({ directory, valueSetFile: path.join(directory, 'valuesets.json') });
}

export const valueSetBase = 'http://ehr-draft-agent.example/fhir/ValueSet';

/** A small valid rule; tests change one line of it to make it invalid. */
export const minimalRule = `id: minimal-rule
version: 1.0.0
title: Minimal rule
trigger: [encounter-planned]
severity: info
guideline:
  label: Test guideline
  url: https://example.org/guideline
  recommendation: Do the thing.
condition:
  criteria:
    - id: adult
      description: Aged 18 or more
      fhirpath: "%patient.birthDate <= today() - 18 years"
suggestedAction: Do the thing.
`;

/**
 * Runs the `rules` command line and captures what it wrote. The command reports failure through
 * process.exitCode, so it is cleared before and after to keep one run from leaking into the next.
 */
export async function runRulesCli(args: string[]): Promise<{ out: string; err: string; exitCode: number }> {
  let out = '';
  let err = '';
  process.exitCode = undefined;
  await createRulesProgram({
    out: (text) => (out += text),
    err: (text) => (err += text),
    isTty: false,
  }).parseAsync(['node', 'rules', ...args]);
  const exitCode = Number(process.exitCode ?? 0);
  process.exitCode = undefined;
  return { out, err, exitCode };
}

/** Serves the sandbox EHR over HTTP on a free local port, so records are read as from a real FHIR server. */
export async function serveSandbox(sandbox: SandboxEhr): Promise<{ server: Server; baseUrl: string }> {
  const app = express();
  app.use('/fhir', sandboxRouter(sandbox));
  const server = await new Promise<Server>((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  sandbox.setBaseUrl(baseUrl);
  return { server, baseUrl };
}
