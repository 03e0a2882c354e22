import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import type { Bundle, DocumentReference, Provenance } from 'fhir/r4.js';
import { draftProvenanceBasis } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { inlineNoteText } from '../../fhir/note-text.ts';
import { ruleTagsIn } from '../rules/review-outcomes.ts';

/**
 * `npm run eval -- signed`: the field measure of quality, read from the EHR. For each draft this service
 * wrote that a clinician signed or rejected: how much of each section they changed (word edit distance
 * between the AI's last version and the signed one, over the longer of the two), the rejection reasons,
 * and per rule version how many nudges were kept at sign-off (accepted), deleted (ignored) or went with
 * a rejected draft (overridden). The AI's version is the one the clinician's first Provenance names as
 * the revision it acted on (reference/shapes/signoff-provenance.json), else the draft's first version.
 * Drafts held in the service's own store (hold and shadow modes) are not read.
 */
export interface SectionEdits {
  section: string;
  drafts: number;
  /** Mean of the per-draft edit rates (0: signed as drafted, 1: rewritten). */
  meanEditRate: number;
}

export interface RuleVersionOutcomes {
  ruleId: string;
  ruleVersion: string;
  delivered: number;
  accepted: number;
  ignored: number;
  overridden: number;
  /** accepted / delivered. */
  acceptance: number | null;
}

export interface SignedReport {
  generatedAt: string;
  source: string;
  drafts: { total: number; signed: number; rejected: number; open: number };
  /** Whole-text edit rate over signed drafts. */
  meanEditRate: number | null;
  sections: SectionEdits[];
  /** Clinicians' own words, cut to 80 characters: read them before sharing the report. */
  rejectionReasons: { reason: string; count: number }[];
  nudges: RuleVersionOutcomes[];
}

const rejectionExtensionUrl = 'urn:ehr-draft-agent:fhir:StructureDefinition/rejection-reason';
const clinicianActivities = new Set(['AU', 'UPDATE', 'NULLIFY']);

/** Word-level Levenshtein distance over the longer text: the share of words a clinician changed. */
export function editRate(before: string, after: string): number {
  const left = before.split(/\s+/).filter(Boolean);
  const right = after.split(/\s+/).filter(Boolean);
  const longest = Math.max(left.length, right.length);
  if (longest === 0) return 0;
  let previous = Array.from({ length: right.length + 1 }, (_, index) => index);
  for (let row = 1; row <= left.length; row++) {
    const current = [row];
    for (let column = 1; column <= right.length; column++) {
      current[column] = Math.min(
        previous[column] + 1,
        current[column - 1] + 1,
        previous[column - 1] + (left[row - 1] === right[column - 1] ? 0 : 1),
      );
    }
    previous = current;
  }
  return previous[right.length] / longest;
}

/** Text by section (`## heading`, or a `Label:` line the extractive engine writes); the service's own heading notes dropped. */
export function sectionsOf(text: string): Map<string, string> {
  const sections = new Map<string, string>();
  let current = '(opening)';
  for (const raw of text.split('\n')) {
    const line = raw.trim();
    const heading = /^#{1,6}\s+(.+)$/.exec(line)?.[1] ?? /^([A-Z][A-Za-z ,/-]{2,60}):$/.exec(line)?.[1];
    if (heading) {
      // What sign-off itself rewrites in a heading (the AI-draft note) is not the clinician's edit.
      current = heading
        .replace(/\s*\((?:AI draft|drafted with AI assistance)[^)]*\)\s*$/i, '')
        .replace(/\s*\[[^\]]*\]/g, '')
        .trim();
      continue;
    }
    sections.set(current, `${sections.get(current) ?? ''}\n${line}`.trim());
  }
  return sections;
}

function versionOf(document: DocumentReference): number {
  return Number(document.meta?.versionId ?? 0);
}

async function historyOf(fhir: FhirClient, id: string): Promise<DocumentReference[]> {
  const bundle = await fhir.get<Bundle>(`DocumentReference/${id}/_history?_count=100`);
  return (bundle.entry ?? [])
    .map((entry) => entry.resource as DocumentReference | undefined)
    .filter((resource): resource is DocumentReference => resource?.resourceType === 'DocumentReference')
    .sort((left, right) => versionOf(left) - versionOf(right));
}

/** Clinicians' Provenances of a draft: some servers find versioned targets only by the versioned form, so both are searched. */
async function clinicianProvenances(
  fhir: FhirClient,
  id: string,
  versions: DocumentReference[],
): Promise<Provenance[]> {
  const targets = [
    `DocumentReference/${id}`,
    ...versions.map((version) => `DocumentReference/${id}/_history/${version.meta?.versionId}`),
  ];
  const found = new Map<string, Provenance>();
  for (const target of targets) {
    for (const provenance of await fhir.search<Provenance>('Provenance', { target, _count: 100 })) {
      const activity = provenance.activity?.coding?.[0]?.code;
      if (provenance.id && activity && clinicianActivities.has(activity))
        found.set(provenance.id, provenance);
    }
  }
  return [...found.values()].sort((left, right) => (left.recorded ?? '').localeCompare(right.recorded ?? ''));
}

function textOf(document: DocumentReference | undefined): string {
  return document ? (inlineNoteText(document) ?? '') : '';
}

export async function signedReport(
  fhir: FhirClient,
  options: { identifierSystem: string; source: string },
): Promise<SignedReport> {
  const drafts = await fhir.search<DocumentReference>('DocumentReference', {
    identifier: `${options.identifierSystem}|`,
    _count: 200,
  });
  const sectionRates = new Map<string, number[]>();
  const wholeRates: number[] = [];
  const reasons = new Map<string, number>();
  const outcomes = new Map<string, RuleVersionOutcomes>();
  let signed = 0;
  let rejected = 0;
  for (const draft of drafts) {
    if (!draft.id || !draft.identifier?.some((identifier) => identifier.system === options.identifierSystem))
      continue;
    const isRejected = draft.status === 'entered-in-error';
    const isSigned = !isRejected && draft.docStatus === 'final';
    if (!isRejected && !isSigned) continue;
    const versions = await historyOf(fhir, draft.id);
    const provenances = await clinicianProvenances(fhir, draft.id, versions);
    const actedOn = provenances[0]?.entity?.find((entity) => entity.role === 'revision')?.what.reference;
    const actedOnVersion = actedOn?.match(/\/_history\/([^/]+)$/)?.[1];
    const aiVersion =
      versions.find((version) => version.meta?.versionId === actedOnVersion) ??
      versions.find((version) => version.docStatus === 'preliminary') ??
      versions[0];
    const rules = draftProvenanceBasis(aiVersion ?? draft).rules ?? [];
    if (isRejected) {
      rejected += 1;
      const reason =
        draft.extension?.find((extension) => extension.url === rejectionExtensionUrl)?.valueString ??
        provenances.flatMap((provenance) => provenance.reason ?? []).find((reason) => reason.text)?.text ??
        '(none recorded)';
      const key = reason.trim().replace(/\s+/g, ' ').slice(0, 80);
      reasons.set(key, (reasons.get(key) ?? 0) + 1);
    } else {
      signed += 1;
      const before = sectionsOf(textOf(aiVersion));
      const after = sectionsOf(textOf(draft));
      wholeRates.push(editRate([...before.values()].join('\n'), [...after.values()].join('\n')));
      for (const section of new Set([...before.keys(), ...after.keys()])) {
        const rate = editRate(before.get(section) ?? '', after.get(section) ?? '');
        sectionRates.set(section, [...(sectionRates.get(section) ?? []), rate]);
      }
    }
    const kept = isSigned ? ruleTagsIn(textOf(draft)) : new Set<string>();
    for (const rule of rules) {
      const key = `${rule.id} ${rule.version}`;
      const entry = outcomes.get(key) ?? {
        ruleId: rule.id,
        ruleVersion: rule.version,
        delivered: 0,
        accepted: 0,
        ignored: 0,
        overridden: 0,
        acceptance: null,
      };
      entry.delivered += 1;
      if (isRejected) entry.overridden += 1;
      else if (kept.has(key)) entry.accepted += 1;
      else entry.ignored += 1;
      entry.acceptance = Number((entry.accepted / entry.delivered).toFixed(4));
      outcomes.set(key, entry);
    }
  }
  const mean = (values: number[]) =>
    Number((values.reduce((sum, value) => sum + value, 0) / values.length).toFixed(4));
  return {
    generatedAt: new Date().toISOString(),
    source: options.source,
    drafts: { total: drafts.length, signed, rejected, open: drafts.length - signed - rejected },
    meanEditRate: wholeRates.length ? mean(wholeRates) : null,
    sections: [...sectionRates.entries()]
      .map(([section, rates]) => ({ section, drafts: rates.length, meanEditRate: mean(rates) }))
      .sort((left, right) => right.meanEditRate - left.meanEditRate),
    rejectionReasons: [...reasons.entries()]
      .map(([reason, count]) => ({ reason, count }))
      .sort((left, right) => right.count - left.count),
    nudges: [...outcomes.values()].sort((left, right) =>
      `${left.ruleId} ${left.ruleVersion}`.localeCompare(`${right.ruleId} ${right.ruleVersion}`),
    ),
  };
}

function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/[\r\n]+/g, ' ');
}

export function signedMarkdown(report: SignedReport): string {
  return [
    '# Signed and rejected drafts',
    '',
    `Generated ${report.generatedAt} from ${report.source}.`,
    `Drafts: ${report.drafts.total} (signed ${report.drafts.signed}, rejected ${report.drafts.rejected}, still open ${report.drafts.open}). Mean edit rate of signed drafts: ${report.meanEditRate ?? 'n/a'}.`,
    '',
    '## Edit rate per section (word edit distance over the longer text)',
    '',
    '| section | signed drafts | mean edit rate |',
    '| --- | --- | --- |',
    ...report.sections.map((entry) => `| ${cell(entry.section)} | ${entry.drafts} | ${entry.meanEditRate} |`),
    '',
    "## Rejection reasons (clinicians' words, cut to 80 characters)",
    '',
    '| reason | drafts |',
    '| --- | --- |',
    ...report.rejectionReasons.map((entry) => `| ${cell(entry.reason)} | ${entry.count} |`),
    '',
    '## Nudge acceptance per rule version',
    '',
    '| rule | version | delivered | accepted | ignored | overridden | acceptance |',
    '| --- | --- | --- | --- | --- | --- | --- |',
    ...report.nudges.map(
      (entry) =>
        `| ${cell(entry.ruleId)} | ${cell(entry.ruleVersion)} | ${entry.delivered} | ${entry.accepted} | ${entry.ignored} | ${entry.overridden} | ${entry.acceptance ?? 'n/a'} |`,
    ),
    '',
  ].join('\n');
}

export function writeSignedReports(report: SignedReport, folder: string): { json: string; markdown: string } {
  mkdirSync(folder, { recursive: true });
  const files = { json: path.join(folder, 'signed.json'), markdown: path.join(folder, 'signed.md') };
  writeFileSync(files.json, `${JSON.stringify(report, null, 2)}\n`);
  writeFileSync(files.markdown, signedMarkdown(report));
  return files;
}

/**
 * The CLI's entry: reads the FHIR server named, else the service configuration's (`fhir.baseUrl`, drafts'
 * identifier system). The token, when the server needs one: EHR_AGENT_AUTH__BACKEND__TOKEN.
 */
export async function runSignedReport(flags: { fhirBase?: string; out: string }): Promise<SignedReport> {
  const { loadConfig } = await import('../config/load-config.ts');
  const config = loadConfig();
  const baseUrl = flags.fhirBase ?? config.fhir.baseUrl;
  if (!baseUrl)
    throw new Error(
      'eval signed needs --fhir-base <url> (or fhir.baseUrl in the service configuration): the FHIR server the drafts were written to',
    );
  const { staticAccessToken } = await import('../../fhir/fhir-client.ts');
  const token = process.env.EHR_AGENT_AUTH__BACKEND__TOKEN;
  const fhir = new FhirClient({ baseUrl, ...(token ? { accessToken: staticAccessToken(token) } : {}) });
  const report = await signedReport(fhir, {
    identifierSystem: config.drafts.identifierSystem,
    source: `FHIR server ${new URL(baseUrl).origin}`,
  });
  const files = writeSignedReports(report, flags.out);
  process.stdout.write(
    `signed ${report.drafts.signed}, rejected ${report.drafts.rejected}, mean edit rate ${report.meanEditRate ?? 'n/a'}\nwrote ${files.markdown}, ${files.json}\n`,
  );
  return report;
}
