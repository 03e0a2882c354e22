import { type FactCategory, factCategories } from './labelled-set.ts';
import type { DraftScore } from './metrics.ts';
import { type UnwantedLines, unwantedKinds } from './unwanted-lines.ts';

/**
 * One configuration's figures over all its drafts, with 95% intervals from a percentile bootstrap over
 * patients (2,000 resamples, seeded): drafts of one patient share a record, so patients, not drafts,
 * are what is resampled. Ratios are pooled (facts recalled over facts asked, across the resampled
 * patients); costs are means per draft.
 */
export const intervalMethod = 'percentile bootstrap over patients, 2000 resamples, 95%, seed 15';

export interface Estimate {
  value: number | null;
  low: number | null;
  high: number | null;
  /** What the value is computed over: facts, statements, nudges or drafts. */
  n: number;
}

export interface MeasuredDraft {
  patientId: string;
  kind: string;
  /** Undefined when no draft was made (the error, without patient data, in `failure`). */
  score?: DraftScore;
  failure?: string;
  /** Lines the written draft should not hold, by kind (a scored draft). */
  unwanted?: UnwantedLines;
  /** Distinct notes the written draft cites (a scored draft). */
  notesCited?: number;
  /** Facts asked of a draft that failed (none recalled); a scored draft carries its own. */
  askedFacts?: { category: FactCategory; recalled: boolean }[];
  /** True when the configuration's fallback engine wrote what was kept (the model's draft kept no line). */
  fallback: boolean;
  usage: { modelCalls: number; promptTokens: number; completionTokens: number };
  seconds: number;
}

export interface ConfigurationFigures {
  name: string;
  patients: number;
  drafts: number;
  failedDrafts: number;
  fallbackDrafts: number;
  factRecall: { overall: Estimate; byCategory: Record<FactCategory, Estimate> };
  statementSupport: Estimate & {
    /** Lines the verifier removed, by reason: unsupported statements that never reach the chart. */
    removedByVerifier: Record<string, number>;
    /** Supported statements over statements checked plus lines the verifier removed. */
    includingRemovals: number | null;
  };
  wrongPatientCitations: number;
  wrongPatientCitationsWritten: number;
  nudgeAgreement: Estimate & { extra: number };
  /** Lines that should not be there, summed over the drafts: the target is 0 for each kind. */
  unwantedLines: UnwantedLines & { total: number };
  /** Distinct notes a scored draft cites, per draft. */
  notesSummarisedPerDraft: Estimate;
  promptTokens: Estimate;
  completionTokens: Estimate;
  modelCalls: Estimate;
  secondsPerDraft: Estimate;
}

function random(seed: number): () => number {
  let state = seed >>> 0;
  return () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let value = state;
    value = Math.imul(value ^ (value >>> 15), value | 1);
    value ^= value + Math.imul(value ^ (value >>> 7), value | 61);
    return ((value ^ (value >>> 14)) >>> 0) / 4_294_967_296;
  };
}

/** Per patient, a numerator and a denominator; the estimate is their pooled ratio. */
type Pair = [number, number];

function round(value: number): number {
  return Number(value.toFixed(4));
}

export function bootstrapRatio(perPatient: readonly Pair[], resamples = 2000): Estimate {
  const total = perPatient.reduce<Pair>((sum, [top, bottom]) => [sum[0] + top, sum[1] + bottom], [0, 0]);
  if (total[1] === 0) return { value: null, low: null, high: null, n: 0 };
  const next = random(15);
  const estimates: number[] = [];
  for (let round = 0; round < resamples; round++) {
    let top = 0;
    let bottom = 0;
    for (let index = 0; index < perPatient.length; index++) {
      const [sampleTop, sampleBottom] = perPatient[Math.floor(next() * perPatient.length)];
      top += sampleTop;
      bottom += sampleBottom;
    }
    if (bottom > 0) estimates.push(top / bottom);
  }
  estimates.sort((left, right) => left - right);
  const at = (share: number) =>
    estimates[Math.min(estimates.length - 1, Math.floor(share * estimates.length))];
  return { value: round(total[0] / total[1]), low: round(at(0.025)), high: round(at(0.975)), n: total[1] };
}

function byPatient(drafts: readonly MeasuredDraft[]): MeasuredDraft[][] {
  const groups = new Map<string, MeasuredDraft[]>();
  for (const draft of drafts) groups.set(draft.patientId, [...(groups.get(draft.patientId) ?? []), draft]);
  return [...groups.values()];
}

function unwantedTotals(drafts: readonly MeasuredDraft[]): UnwantedLines & { total: number } {
  const totals = Object.fromEntries(
    unwantedKinds.map((kind) => [
      kind,
      drafts.reduce((sum, draft) => sum + (draft.unwanted?.[kind] ?? 0), 0),
    ]),
  ) as UnwantedLines;
  return { ...totals, total: unwantedKinds.reduce((sum, kind) => sum + totals[kind], 0) };
}

export function aggregate(name: string, drafts: readonly MeasuredDraft[]): ConfigurationFigures {
  const patients = byPatient(drafts);
  const scored = (group: readonly MeasuredDraft[]) =>
    group.flatMap((draft) => (draft.score ? [draft.score] : []));
  const allScores = scored(drafts);
  // A failed draft carried none of the facts asked of it: it counts against recall, not as missing data.
  const recallPairs = (category?: FactCategory): Pair[] =>
    patients.map((group) => {
      let recalled = 0;
      let asked = 0;
      for (const draft of group) {
        const facts = (draft.score?.facts ?? draft.askedFacts ?? []).filter(
          (fact) => !category || fact.category === category,
        );
        asked += facts.length;
        recalled += facts.filter((fact) => fact.recalled).length;
      }
      return [recalled, asked];
    });
  const sumOf = (group: MeasuredDraft[], pick: (draft: MeasuredDraft) => number): Pair => [
    group.reduce((sum, draft) => sum + pick(draft), 0),
    group.length,
  ];
  const removed: Record<string, number> = {};
  let checked = 0;
  let supported = 0;
  for (const score of allScores) {
    checked += score.statements.checked;
    supported += score.statements.supported;
    for (const [reason, count] of Object.entries(score.removedByVerifier))
      removed[reason] = (removed[reason] ?? 0) + count;
  }
  const removedTotal = Object.values(removed).reduce((sum, count) => sum + count, 0);
  return {
    name,
    patients: patients.length,
    drafts: drafts.length,
    failedDrafts: drafts.filter((draft) => !draft.score).length,
    fallbackDrafts: drafts.filter((draft) => draft.fallback).length,
    factRecall: {
      overall: bootstrapRatio(recallPairs()),
      byCategory: Object.fromEntries(
        factCategories.map((category) => [category, bootstrapRatio(recallPairs(category))]),
      ) as Record<FactCategory, Estimate>,
    },
    statementSupport: {
      ...bootstrapRatio(
        patients.map((group) =>
          scored(group).reduce<Pair>(
            (sum, score) => [sum[0] + score.statements.supported, sum[1] + score.statements.checked],
            [0, 0],
          ),
        ),
      ),
      removedByVerifier: removed,
      includingRemovals: checked + removedTotal > 0 ? round(supported / (checked + removedTotal)) : null,
    },
    wrongPatientCitations: allScores.reduce((sum, score) => sum + score.wrongPatientCitations, 0),
    wrongPatientCitationsWritten: allScores.reduce(
      (sum, score) => sum + score.wrongPatientCitationsWritten,
      0,
    ),
    nudgeAgreement: {
      ...bootstrapRatio(
        patients.map((group) =>
          scored(group).reduce<Pair>(
            (sum, score) => [sum[0] + score.nudges.present, sum[1] + score.nudges.expected],
            [0, 0],
          ),
        ),
      ),
      extra: allScores.reduce((sum, score) => sum + score.nudges.extra, 0),
    },
    unwantedLines: unwantedTotals(drafts),
    notesSummarisedPerDraft: bootstrapRatio(
      patients.map((group) => {
        const drafted = group.filter((draft) => draft.score);
        return [drafted.reduce((sum, draft) => sum + (draft.notesCited ?? 0), 0), drafted.length];
      }),
    ),
    promptTokens: bootstrapRatio(patients.map((group) => sumOf(group, (draft) => draft.usage.promptTokens))),
    completionTokens: bootstrapRatio(
      patients.map((group) => sumOf(group, (draft) => draft.usage.completionTokens)),
    ),
    modelCalls: bootstrapRatio(patients.map((group) => sumOf(group, (draft) => draft.usage.modelCalls))),
    secondsPerDraft: bootstrapRatio(patients.map((group) => sumOf(group, (draft) => draft.seconds))),
  };
}
