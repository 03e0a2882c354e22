import type { DocumentReference, Encounter } from 'fhir/r4.js';
import { defaultContentPolicy } from '../../agents/clinical-content-policy.ts';
import type { DraftRequest, NudgeInput } from '../../agents/draft-engine.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import { patientReferenceOf } from '../../fhir/patient-scope.ts';
import type { Logger } from '../log.ts';
import { estimateTokens } from '../model/provider.ts';
import { draftVerified, nudgesWithinPolicy, recordsForDraft } from '../pipeline/process-encounter-job.ts';
import { toNudgeInput, triggerForEncounter } from '../rules/evaluate.ts';
import { defaultRulesConfig } from '../rules/rules-config.ts';
import { createRulesRuntime } from '../rules/rules-runtime.ts';
import { aggregate, type ConfigurationFigures, intervalMethod, type MeasuredDraft } from './aggregate.ts';
import { type ConfigurationSpec, createConfiguration } from './configurations.ts';
import { type FactCategory, factCategories, type LabelledFact, labelledFacts } from './labelled-set.ts';
import { scoreDraft } from './metrics.ts';
import { type Progress, silentProgress } from './progress.ts';
import { type DraftCaseReference, openSource, type SourceOption } from './sources.ts';
import { notesCited, unwantedLines } from './unwanted-lines.ts';

/**
 * `npm run eval`: the labelled set is made from what the service's own retrieval reads, the rules pick
 * the nudges as the pipeline's selectNudges does, and every configuration drafts and is verified through
 * the pipeline's draftVerified (fallback included). Each draft is scored, and the figures are aggregated
 * per configuration with intervals over patients. The benchmark figures are those of the patient with the
 * most notes.
 */
export interface EvalOptions {
  source: SourceOption;
  configurations: ConfigurationSpec[];
  logger: Logger;
  progress?: Progress;
  draftIdentifierSystem?: string;
}

export interface BenchmarkFigures {
  configuration: string;
  notes: number;
  naiveTokens: number;
  sentTokens: number;
  naiveOverSent: number | null;
  modelCalls: number;
  /** Extraction calls (map and reduce), known for the scripted model only. */
  chunks: number | null;
  callsWithinChunksPlusTwo: boolean | null;
  /** Problems, medications, allergies and latest key results. */
  structuredRecall: number | null;
  plantedRecall: number | null;
  /** Token and call targets are null for an engine that calls no model. */
  targets: {
    recallAtLeast095: boolean;
    atMostAFiftiethOfNaive: boolean | null;
    callsWithinChunksPlusTwo: boolean | null;
  };
}

export interface EvalReport {
  generatedAt: string;
  source: string;
  intervals: string;
  labelledSet: {
    drafts: number;
    patients: number;
    facts: Record<FactCategory, number>;
    /** Cases the pipeline would not draft: the patient died before the visit. */
    skippedDeceased: number;
  };
  configurations: ConfigurationFigures[];
  benchmark: BenchmarkFigures[];
  method: string[];
}

interface PreparedCase {
  reference: DraftCaseReference;
  /** As retrieved, uncut: what unwanted lines are judged against. */
  retrieved: PatientRecord;
  record: PatientRecord;
  nudges: NudgeInput[];
  facts: LabelledFact[];
  naiveTokens: number;
}

const method = [
  'Facts: active problems, active medications, allergies, the latest result of each key test (HbA1c, blood pressure, creatinine, potassium, LDL, BMI, PHQ-9, eGFR, glucose), the nudges the rules decided, and statements planted in notes (sandbox). A fact counts as recalled when one line of the verified draft contains all its terms (significant words of a coded display; ingredient and strength; value, unit and date of a result; `rule <id>` of a nudge) and cites its source resource.',
  "Statement support: every cited line outside the suggested actions must have each of its numbers and of its words of four or more letters (connective and template words aside) in the resources it cites (their JSON, and a note's text). Lines the verifier removed are reported beside it, by reason.",
  "Wrong-patient citations: citations in the engine's own text of a resource that belongs to another patient of the evaluated population, or that the verifier found to be another patient's; the written text is checked the same way and must hold none.",
  "Records: as the pipeline drafts from them: the service's retrieval, cut to the chart as it stood at the end of the visit, with the default content policy (sensitive findings withheld); patients who died before the visit are skipped. The labelled set comes from the same record, so nothing withheld from every draft is asked of one.",
  'Unwanted lines (target 0, counted in the written draft, each line once per kind): after the encounter (citing a resource the record as of the visit leaves out, judged against the whole retrieved record so a leaking cut shows), social findings in a problem section, duplicates (a line repeating one above it in its section, the same medication again, or problem lines the problem list would collapse: the same finding twice, superseded BMI classes, prediabetes beside diabetes) and sensitive findings against the default policy (citing what it withholds, or naming a withheld category). Notes summarised: distinct notes a draft cites.',
  'Tokens and model calls: what the engine reports (0 for the extractive engine); naive tokens: the record as JSON plus the text of notes held in Binaries, at three characters a token.',
  'The scripted cooperative model copies what its prompts show: its recall measures what the context packing lets reach a model, not a model.',
];

function ownersOf(records: PatientRecord[]): Map<string, string> {
  const owners = new Map<string, string>();
  for (const record of records) {
    for (const resource of recordResources(record)) {
      const owner = patientReferenceOf(resource);
      if (owner?.startsWith('Patient/'))
        owners.set(`${resource.resourceType}/${resource.id}`, owner.slice(8));
    }
  }
  return owners;
}

function naiveTokensOf(record: PatientRecord): number {
  const inline = new Set(
    record.noteResources
      .filter((document: DocumentReference) => document.content?.some((content) => content.attachment.data))
      .map((document) => `DocumentReference/${document.id}`),
  );
  const binaryText = record.notes
    .filter((note) => !inline.has(note.reference))
    .map((note) => note.text)
    .join('\n');
  return estimateTokens(JSON.stringify(recordResources(record)) + binaryText);
}

function describeFailure(error: unknown): string {
  const code = (error as { code?: unknown }).code;
  const name = error instanceof Error ? error.name : 'Error';
  return typeof code === 'string' ? `${name} (${code})` : name;
}

interface RecordOptions {
  draftIdentifierSystem: string;
  additionalTypes?: readonly string[];
  /** The instant a visit still to come is cut at (the pipeline's now). */
  now?: Date;
}

/**
 * A case's record as retrieved with the service's own retrieval, and the record a draft of it is made from,
 * prepared by the pipeline's own recordsForDraft (cut to the chart as it stood at the end of the visit, the
 * default content policy applied). Undefined when the pipeline would draft nothing (the patient died before
 * the visit).
 */
export async function preparedRecords(
  fhir: FhirClient,
  reference: DraftCaseReference,
  options: RecordOptions,
): Promise<{ retrieved: PatientRecord; record: PatientRecord; forRules: PatientRecord } | undefined> {
  const encounter = await fhir.read<Encounter>('Encounter', reference.encounterId);
  const retrieved = await retrievePatientRecord(fhir, encounter, options);
  const records = recordsForDraft(retrieved, reference.kind, {
    now: options.now ?? new Date(),
    contentPolicy: defaultContentPolicy,
  });
  return records ? { retrieved, ...records } : undefined;
}

/** The record a draft of this case is made from (see preparedRecords). */
export async function recordForDraft(
  fhir: FhirClient,
  reference: DraftCaseReference,
  options: RecordOptions,
): Promise<PatientRecord | undefined> {
  return (await preparedRecords(fhir, reference, options))?.record;
}

export async function runEvaluation(options: EvalOptions): Promise<EvalReport> {
  const { logger } = options;
  const progress = options.progress ?? silentProgress;
  const draftIdentifierSystem = options.draftIdentifierSystem ?? 'urn:ehr-draft-agent:draft';
  const source = await openSource(options.source);
  const rules = await createRulesRuntime({ ...defaultRulesConfig, watch: false }, { logger });
  try {
    const prepared: PreparedCase[] = [];
    let skippedDeceased = 0;
    // One instant for the whole run: records are cut, and unwanted lines judged, against the same now.
    const now = new Date();
    for (const reference of source.cases) {
      const records = await preparedRecords(source.fhir, reference, {
        draftIdentifierSystem,
        additionalTypes: rules.current().additionalResourceTypes,
        now,
      });
      if (!records) {
        skippedDeceased += 1;
        continue;
      }
      const { retrieved, record, forRules } = records;
      const trigger = triggerForEncounter(record.encounter);
      // As the pipeline: rules decide on the whole visit, the draft carries only nudges within the content policy.
      const nudges = trigger
        ? nudgesWithinPolicy(
            (await rules.evaluate(forRules, { trigger, occasionId: record.encounter.id })).nudges.map(
              toNudgeInput,
            ),
            record,
          )
        : [];
      prepared.push({
        reference,
        retrieved,
        record,
        nudges,
        facts: labelledFacts(record, nudges, source.planted.get(reference.patientId) ?? []),
        naiveTokens: naiveTokensOf(record),
      });
    }
    const owners = ownersOf(prepared.map((item) => item.record));
    const configurations: ConfigurationFigures[] = [];
    const benchmark: BenchmarkFigures[] = [];
    const largest = prepared
      .filter((item) => item.reference.kind === 'progress-summary')
      .sort((left, right) => right.record.notes.length - left.record.notes.length)[0];
    progress.start(prepared.length * options.configurations.length);
    for (const spec of options.configurations) {
      const configuration = await createConfiguration(spec, logger);
      const measured: MeasuredDraft[] = [];
      try {
        for (const item of prepared) {
          configuration.scripted?.resetCounts();
          const request: DraftRequest = {
            kind: item.reference.kind,
            record: item.record,
            nudges: item.nudges,
          };
          const startedAt = performance.now();
          let draft: MeasuredDraft;
          try {
            const { result, verification } = await draftVerified(configuration.engine, request, logger);
            const seconds = (performance.now() - startedAt) / 1000;
            draft = {
              patientId: item.reference.patientId,
              kind: item.reference.kind,
              score: scoreDraft({
                record: item.record,
                facts: item.facts,
                engineText: result.text,
                headings: result.headings,
                verification,
                owners,
                expectedRuleIds: item.nudges.map((nudge) => nudge.ruleId),
              }),
              unwanted: unwantedLines({
                retrieved: item.retrieved,
                text: verification.text,
                headings: result.headings,
                now,
              }),
              notesCited: notesCited(verification.text),
              fallback: spec.kind !== 'extractive' && result.engine.id === configuration.engine.fallback?.id,
              usage: result.usage ?? { modelCalls: 0, promptTokens: 0, completionTokens: 0 },
              seconds,
            };
          } catch (error) {
            // No patient data in the report: the error's kind only.
            draft = {
              patientId: item.reference.patientId,
              kind: item.reference.kind,
              failure: describeFailure(error),
              askedFacts: item.facts.map((fact) => ({ category: fact.category, recalled: false })),
              fallback: false,
              usage: { modelCalls: 0, promptTokens: 0, completionTokens: 0 },
              seconds: (performance.now() - startedAt) / 1000,
            };
          }
          measured.push(draft);
          if (item === largest)
            benchmark.push(benchmarkFigures(spec.name, item, draft, configuration.scripted?.callsByStage));
          progress.tick(spec.name);
        }
      } finally {
        await configuration.close();
      }
      configurations.push(aggregate(spec.name, measured));
    }
    progress.done();
    const facts = Object.fromEntries(
      factCategories.map((category) => [
        category,
        prepared.reduce(
          (sum, item) => sum + item.facts.filter((fact) => fact.category === category).length,
          0,
        ),
      ]),
    ) as Record<FactCategory, number>;
    return {
      generatedAt: new Date().toISOString(),
      source: source.description,
      intervals: intervalMethod,
      labelledSet: {
        drafts: prepared.length,
        patients: new Set(prepared.map((item) => item.reference.patientId)).size,
        facts,
        skippedDeceased,
      },
      configurations,
      benchmark,
      method,
    };
  } finally {
    await rules.close();
    await source.close();
  }
}

function recallOf(draft: MeasuredDraft, categories: FactCategory[]): number | null {
  const facts = (draft.score?.facts ?? draft.askedFacts ?? []).filter((fact) =>
    categories.includes(fact.category),
  );
  if (facts.length === 0) return null;
  return Number((facts.filter((fact) => fact.recalled).length / facts.length).toFixed(4));
}

function benchmarkFigures(
  configuration: string,
  item: PreparedCase,
  draft: MeasuredDraft,
  stageCalls: ReadonlyMap<string, number> | undefined,
): BenchmarkFigures {
  const chunks = stageCalls ? (stageCalls.get('facts') ?? 0) : null;
  const within = chunks === null ? null : draft.usage.modelCalls <= chunks + 2;
  const structuredRecall = recallOf(draft, ['problem', 'medication', 'allergy', 'result']);
  const plantedRecall = recallOf(draft, ['planted']);
  const sent = draft.usage.promptTokens;
  return {
    configuration,
    notes: item.record.notes.length,
    naiveTokens: item.naiveTokens,
    sentTokens: sent,
    naiveOverSent: sent > 0 ? Number((item.naiveTokens / sent).toFixed(1)) : null,
    modelCalls: draft.usage.modelCalls,
    chunks,
    callsWithinChunksPlusTwo: within,
    structuredRecall,
    plantedRecall,
    targets: {
      recallAtLeast095: (structuredRecall ?? 0) >= 0.95 && (plantedRecall ?? 1) >= 0.95,
      atMostAFiftiethOfNaive: draft.usage.modelCalls === 0 ? null : sent * 50 <= item.naiveTokens,
      callsWithinChunksPlusTwo: within,
    },
  };
}
