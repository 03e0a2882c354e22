import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import type { FhirResource } from 'fhir/r4.js';
import type { DraftKind } from '../agents/draft-engine.ts';
import { MedGemmaEngine } from '../agents/medgemma-engine.ts';
import { PromptLibrary } from '../agents/prompt-library.ts';
import { isActiveCondition, isActiveMedication } from '../agents/record-lines.ts';
import { silentLogger } from '../src/log.ts';
import { agentBudgetSchema, modelProfiles } from '../src/model/model-config.ts';
import { estimateTokens } from '../src/model/provider.ts';
import { readNdjsonFolder } from '../src/sandbox/load-ndjson.ts';
import { generatePatient } from '../src/sandbox/synthetic-patients.ts';
import { groupByPatient, MeasuringProvider, recordWithNotes } from './context-packing.support.ts';

/**
 * Context packing: what the MedGemma agents send to the model per draft (characters, and tokens
 * estimated at three characters each: no tokenizer is at hand without the model) against a naive dump
 * of the same patient's resources as JSON, measured in the same run. Checks that every active
 * condition and medication is still represented in what the model saw, that no single call exceeds
 * the context, and that the large patient needs at most chunks + 2 model calls.
 */
const repositoryRoot = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const syntheaFolder = path.resolve(repositoryRoot, '../shared/fixtures/synthea-r4');
const contextSize = modelProfiles['medgemma-27b'].contextSize;

interface PatientFigures {
  patient: string;
  kind: DraftKind;
  navigation: string;
  notes: number;
  naiveCharacters: number;
  naiveTokens: number;
  sentCharacters: number;
  sentTokens: number;
  naiveOverSent: number;
  modelCalls: number;
  navigationSteps: number;
  extractionChunks: number;
  callsWithinChunksPlusTwo: boolean;
  largestCallTokens: number;
  everyCallWithinContext: boolean;
  activeConditionsAndMedications: number;
  allActiveRepresented: boolean;
}

async function measure(
  label: string,
  resources: FhirResource[],
  kind: DraftKind,
  prompts: PromptLibrary,
  noteReads: number,
): Promise<PatientFigures> {
  const record = recordWithNotes(resources, kind);
  const provider = new MeasuringProvider(contextSize, { noteReads });
  const engine = new MedGemmaEngine({
    provider,
    prompts,
    budget: agentBudgetSchema.parse({}),
    logger: silentLogger(),
  });
  await engine.draft({ kind, record, nudges: [] });
  const naive = JSON.stringify(resources);
  const sentCharacters = provider.calls.reduce((sum, call) => sum + call.promptCharacters, 0);
  const sentTokens = provider.calls.reduce((sum, call) => sum + call.promptTokens, 0);
  const seen = provider.calls.map((call) => call.text).join('\n');
  const active = [
    ...record.conditions.filter(isActiveCondition).map((condition) => `Condition/${condition.id}`),
    ...record.medications
      .filter(isActiveMedication)
      .map((medication) => `MedicationRequest/${medication.id}`),
  ];
  const chunks = provider.calls.filter((call) => call.schemaName === 'facts').length;
  const largest = Math.max(...provider.calls.map((call) => call.promptTokens + call.maxTokens));
  return {
    patient: label,
    kind,
    navigation: noteReads ? `reads up to ${noteReads} notes with read_note` : 'final at once',
    notes: record.notes.length,
    naiveCharacters: naive.length,
    naiveTokens: estimateTokens(naive),
    sentCharacters,
    sentTokens,
    naiveOverSent: Number((estimateTokens(naive) / sentTokens).toFixed(1)),
    modelCalls: provider.calls.length,
    navigationSteps: provider.calls.filter((call) => call.schemaName === 'tool_step').length,
    extractionChunks: chunks,
    callsWithinChunksPlusTwo: provider.calls.length <= chunks + 2,
    largestCallTokens: largest,
    everyCallWithinContext: largest <= contextSize,
    activeConditionsAndMedications: active.length,
    allActiveRepresented: active.every((reference) => seen.includes(`[${reference}]`)),
  };
}

export async function run(): Promise<Record<string, unknown>> {
  const prompts = PromptLibrary.load();
  const patients: PatientFigures[] = [];
  if (existsSync(syntheaFolder)) {
    const groups = groupByPatient(await readNdjsonFolder(syntheaFolder));
    for (const [reference, resources] of groups) {
      for (const noteReads of [0, 3]) {
        const label = `synthea:${reference.slice(8, 16)}`;
        patients.push(await measure(label, resources, 'progress-summary', prompts, noteReads));
      }
    }
  }
  // The sandbox's long-history patient (scenario 0: more than 300 notes), both kinds of draft.
  const longHistory = generatePatient(0, {
    count: 1,
    seed: 1,
    now: new Date('2026-06-01T00:00:00Z'),
    binaryNoteShare: 0,
  });
  for (const noteReads of [0, 3]) {
    patients.push(
      await measure('sandbox:long-history', longHistory.resources, 'progress-summary', prompts, noteReads),
    );
    patients.push(
      await measure('sandbox:long-history', longHistory.resources, 'previsit-briefing', prompts, noteReads),
    );
  }

  const sorted = [...patients].sort((left, right) => right.naiveTokens - left.naiveTokens);
  const largest = sorted.slice(0, Math.max(1, Math.ceil(sorted.length / 4)));
  return {
    contextBudgetTokens: contextSize,
    tokenEstimate: 'characters / 3 for both sides',
    syntheaFixtures: existsSync(syntheaFolder) ? syntheaFolder : 'absent: only generated patients measured',
    targets: {
      everyCallWithinContext: patients.every((figures) => figures.everyCallWithinContext),
      allActiveRepresented: patients.every((figures) => figures.allActiveRepresented),
      atMostATenthOfNaive: patients.every((figures) => figures.naiveOverSent >= 10),
      atMostAFiftiethForLargest: largest.every((figures) => figures.naiveOverSent >= 50),
      largePatientCallsWithinChunksPlusTwo: patients
        .filter((figures) => figures.patient.startsWith('sandbox'))
        .every((figures) => figures.callsWithinChunksPlusTwo),
    },
    patients,
  };
}

if (import.meta.url === `file://${process.argv[1]}`) {
  console.log(JSON.stringify(await run(), null, 2));
}
