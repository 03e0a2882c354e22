import { type PatientRecord, retrievedVersions } from '../fhir/patient-record.ts';
import type { Logger } from '../src/log.ts';
import type { AgentBudget } from '../src/model/model-config.ts';
import { type ChatMessage, countPromptTokens, type ModelProvider } from '../src/model/provider.ts';
import type { DraftEngine, DraftKind, DraftRequest, DraftResult } from './draft-engine.ts';
import { type DraftPlan, planDraft } from './draft-plan.ts';
import {
  defaultNoteOrder,
  type MaterialChunk,
  type MaterialItem,
  noteItem,
  packChunks,
  selectMaterial,
} from './material.ts';
import {
  defaultOutputLimits,
  type Fact,
  factLines,
  factsSchemas,
  modelHeadingLines,
  nudgeLines,
  type OutputLimits,
  suggestedActionsHeading,
  tokensPerCitation,
  writeUpSchemas,
} from './output-schemas.ts';
import { type PromptLibrary, type PromptTemplate, renderPrompt } from './prompt-library.ts';
import {
  allergyLine,
  conditionLine,
  encounterLine,
  immunizationLine,
  medicationLine,
  observationLine,
  procedureLine,
} from './record-lines.ts';
import { buildManifest } from './record-manifest.ts';
import { oneLine } from './record-text.ts';
import { createRecordTools, type RecordTool, sanitizeToolError } from './record-tools.ts';
import { RunBudget } from './run-budget.ts';
import {
  createStepProtocol,
  describeTools,
  type NavigationStep,
  type StepSchemaStyle,
} from './step-protocol.ts';
import {
  ContextBudgetError,
  checkFitsContext,
  InvalidModelOutputError,
  structuredCall,
} from './structured-call.ts';

/**
 * The MedGemma agents (progress-note summary, pre-visit briefing) as one DraftEngine, after Google's
 * MedGemma EHR navigator: code builds a manifest; the model navigates the record with read-only tools
 * and names what to read; facts are extracted chunk by chunk with `[Type/id]` citations (map);
 * merged if they overflow (reduce); a final call writes the draft. The engine reports what it showed
 * the model; the pipeline's verifier then removes every line that cites nothing, or anything the
 * model was not shown. Every call is checked against the context and the run's budget first.
 */
export interface MedGemmaEngineOptions {
  provider: ModelProvider;
  prompts: PromptLibrary;
  budget: AgentBudget;
  logger: Logger;
  limits?: Partial<OutputLimits>;
  engineVersion?: string;
  /** How navigation steps are constrained; 'flat' for remote servers (see step-protocol.ts). */
  stepSchemaStyle?: StepSchemaStyle;
}

const kindPromptIds: Record<DraftKind, string> = {
  'progress-summary': 'progress-summary',
  'previsit-briefing': 'previsit-briefing',
};

/** The kind prompt's section headings (the write-up's sections). */
function kindHeadings(template: PromptTemplate): string[] {
  return template.headings ?? ['Summary'];
}

const titles: Record<DraftKind, string> = {
  'progress-summary': 'Progress note summary (AI draft, needs review)',
  'previsit-briefing': 'Pre-visit briefing (AI draft, needs review)',
};

export { defaultOutputLimits, type OutputLimits, planDraft };

const referencePattern = /^[A-Z][A-Za-z]+\/[A-Za-z0-9\-.]{1,64}$/;

/** Anything that could end a line of the draft, or hide text: a model's line is one line. */
const lineBreaking = /[\p{Cc}\u2028\u2029\u200b-\u200f\u202a-\u202e\u2060-\u2069\ufeff]+/gu;

/**
 * Splits at sentence ends followed by a capital or digit; short abbreviations (Dr., St.) do not end a
 * sentence. The model's own `[Type/id]` text is kept as it is, so the verifier checks it.
 */
export function sentencesOf(text: string): string[] {
  const flat = text.replace(lineBreaking, ' ').trim();
  const sentences: string[] = [];
  let start = 0;
  for (const match of flat.matchAll(/[.!?]\s+(?=[A-Z0-9])/g)) {
    const end = (match.index ?? 0) + 1;
    const candidate = flat.slice(start, end).trim();
    if (/(?:^|\s)(?:Dr|Mr|Mrs|Ms|St|Jr|Sr|No|vs|approx)\.$/i.test(candidate)) continue;
    sentences.push(candidate);
    start = end;
  }
  sentences.push(flat.slice(start).trim());
  return sentences.filter((sentence) => sentence !== '');
}

/** Share of the context the manifest may take in the navigation prompt. */
const manifestShare = 0.4;

/** Every resource of the record as its one-line form, for material the model names by reference. */
function resourceLines(record: PatientRecord): Map<string, string> {
  const lines = new Map<string, string>();
  const add = (line: string) => {
    const match = /^\[([^\]]+)\]/.exec(line);
    if (match) lines.set(match[1], line);
  };
  record.conditions.map(conditionLine).forEach(add);
  record.medications.map(medicationLine).forEach(add);
  record.allergies.map(allergyLine).forEach(add);
  record.observations.map(observationLine).forEach(add);
  record.encounters.map(encounterLine).forEach(add);
  add(encounterLine(record.encounter));
  record.procedures.map(procedureLine).forEach(add);
  record.immunizations.map(immunizationLine).forEach(add);
  return lines;
}

/** What one draft run has shown the model, and therefore what its text may cite. */
class RunState {
  readonly shown = new Set<string>();
  readonly notesRead: MaterialItem[] = [];
  readingList: string[] = [];
  focus = '';
  navigationEnded: string | undefined;
}

export class MedGemmaEngine implements DraftEngine {
  readonly id = 'medgemma-agent';
  readonly version: string;
  private readonly provider: ModelProvider;
  private readonly prompts: PromptLibrary;
  private readonly budgetLimits: AgentBudget;
  private readonly logger: Logger;
  private readonly limits: OutputLimits;
  private readonly stepSchemaStyle: StepSchemaStyle;

  constructor(options: MedGemmaEngineOptions) {
    this.stepSchemaStyle = options.stepSchemaStyle ?? 'precise';
    this.provider = options.provider;
    this.prompts = options.prompts;
    this.budgetLimits = options.budget;
    this.logger = options.logger;
    this.limits = { ...defaultOutputLimits, ...options.limits };
    this.version = options.engineVersion ?? '1.0.0';
    // Fail at start, not on the first event, when a prompt file is missing.
    for (const id of [
      'record-navigator',
      'fact-extraction',
      'fact-reduction',
      ...Object.values(kindPromptIds),
    ]) {
      this.prompts.get(id);
    }
  }

  private get countTokens(): (text: string) => number {
    return (text) => this.provider.countTokens(text);
  }

  /** Tokens a call may fill with prompt: the context minus its output and the safety margin. */
  private promptCapacity(maxTokens: number): number {
    return this.provider.contextSize - maxTokens - this.budgetLimits.safetyMarginTokens;
  }

  async draft(request: DraftRequest): Promise<DraftResult> {
    const { record, kind } = request;
    const budget = new RunBudget(this.budgetLimits);
    const state = new RunState();
    const kindPrompt = this.prompts.get(kindPromptIds[kind]);
    const goal = kindPrompt.goal ?? '';

    const plan = planDraft(record, this.budgetLimits);
    const navigatorPrompt = this.prompts.get('record-navigator');
    const navigatorOverhead = this.countTokens(
      renderPrompt(navigatorPrompt, { goal, tools: '', manifest: '', maxReads: 24, maxSteps: 99 }),
    );
    const manifest = buildManifest(record, kind, {
      maxTokens: Math.max(
        200,
        Math.min(
          plan.manifestTokens,
          Math.floor(this.provider.contextSize * manifestShare),
          this.promptCapacity(this.budgetLimits.maxOutputTokens) - navigatorOverhead - 600,
        ),
      ),
      countTokens: this.countTokens,
    });
    for (const reference of manifest.references) state.shown.add(reference);

    const tools = createRecordTools(record, {
      manifestText: () => manifest.text,
      maxNoteTokens: Math.max(
        200,
        Math.min(Math.floor(this.provider.contextSize / 6), Math.floor(plan.navigationAllowance / 2)),
      ),
      countTokens: this.countTokens,
    });
    await this.navigate(request, { budget, state, tools, manifestText: manifest.text, goal, plan });

    const material = this.collectMaterial(record, kind, state, plan.materialTokens);
    for (const item of material) state.shown.add(item.reference);
    let facts = await this.extractFacts(request, {
      budget,
      material,
      goal,
      focus: state.focus,
    });
    facts = await this.reduceFacts(request, {
      budget,
      facts,
      goal,
      kindPrompt,
      essentials: manifest.essentials,
    });

    const evidence = new Set(retrievedVersions(record).keys());
    for (const nudge of request.nudges) {
      for (const reference of nudge.evidence) if (evidence.has(reference)) state.shown.add(reference);
    }
    const text = await this.writeUp(request, {
      budget,
      facts,
      kindPrompt,
      essentials: manifest.essentials,
      shown: state.shown,
    });
    this.logger.info(
      {
        kind,
        encounterId: record.encounter.id,
        modelCalls: budget.modelCalls,
        toolCalls: budget.toolCalls,
        steps: budget.steps,
        materialItems: material.length,
        facts: facts.length,
        navigationEnded: state.navigationEnded,
      },
      'model draft written',
    );
    return {
      kind,
      title: titles[kind],
      text,
      headings: modelHeadingLines(kindHeadings(kindPrompt)),
      shown: [...state.shown],
      engine: { id: this.id, version: this.version, model: this.provider.modelId },
      prompt: { id: kindPrompt.id, version: kindPrompt.version },
      prompts: ['record-navigator', 'fact-extraction', 'fact-reduction', kindPrompt.id].map((id) => ({
        id,
        version: this.prompts.get(id).version,
      })),
      usage: {
        modelCalls: budget.modelCalls,
        promptTokens: budget.promptTokens,
        completionTokens: budget.completionTokens,
      },
    };
  }

  /** The tool loop: bounded by steps and tool calls; ends when the model says final or a bound is hit. */
  private async navigate(
    request: DraftRequest,
    context: {
      budget: RunBudget;
      state: RunState;
      tools: RecordTool[];
      manifestText: string;
      goal: string;
      plan: DraftPlan;
    },
  ): Promise<void> {
    const { budget, state, tools } = context;
    // A record over the ceiling gets one navigation step (its reading list), so model calls stay at
    // most the number of chunks plus two; smaller records may navigate within the allowance.
    const maxSteps = context.plan.large ? Math.min(1, budget.limits.maxSteps) : budget.limits.maxSteps;
    let navigationTokens = 0;
    let firstStepTokens: number | undefined;
    const protocol = createStepProtocol(tools, {
      maxStringLength: this.limits.maxStringLength,
      style: this.stepSchemaStyle,
    });
    const messages: ChatMessage[] = [
      {
        role: 'user',
        content: renderPrompt(this.prompts.get('record-navigator'), {
          goal: context.goal,
          tools: describeTools(tools),
          manifest: context.manifestText,
          maxReads: 24,
          maxSteps,
        }),
      },
    ];
    const toolResultIndexes: number[] = [];
    const maxTokens = Math.min(this.budgetLimits.maxOutputTokens, 512);
    while (budget.steps < maxSteps) {
      request.signal?.throwIfAborted();
      if (!this.compactToFit(messages, toolResultIndexes, maxTokens, budget)) {
        state.navigationEnded = 'context-full';
        return;
      }
      const stepTokens = countPromptTokens(this.provider, messages);
      if (
        firstStepTokens !== undefined &&
        navigationTokens + stepTokens > firstStepTokens + context.plan.navigationAllowance
      ) {
        state.navigationEnded = 'token-allowance';
        return;
      }
      firstStepTokens ??= stepTokens;
      navigationTokens += stepTokens;
      budget.steps += 1;
      let step: NavigationStep;
      let raw: string;
      try {
        ({ value: step, raw } = await structuredCall({
          provider: this.provider,
          budget,
          messages,
          schema: protocol.schema,
          jsonSchema: protocol.jsonSchema,
          schemaName: 'navigation_step',
          maxTokens,
          temperature: budget.limits.temperature,
          signal: request.signal,
          refine: (value) => protocol.checkArguments(value),
        }));
      } catch (error) {
        // An invalid step ends navigation cleanly; extraction falls back to code's choice of material.
        if (error instanceof InvalidModelOutputError) {
          state.navigationEnded = 'invalid-step';
          return;
        }
        throw error;
      }
      if (step.action === 'final') {
        state.readingList = step.read;
        state.focus = step.focus;
        state.navigationEnded = 'final';
        return;
      }
      messages.push({ role: 'assistant', content: raw });
      if (!budget.canCallTool()) {
        messages.push({
          role: 'user',
          content: 'The tool budget is spent. Reply with the final action now.',
        });
        continue;
      }
      budget.toolCalls += 1;
      const tool = protocol.tools.get(step.tool)!;
      let resultText: string;
      try {
        const result = tool.execute(tool.schema.parse(step.args));
        for (const reference of result.references) state.shown.add(reference);
        for (const note of result.notesRead) state.notesRead.push(noteItem(note, this.countTokens));
        resultText = result.text;
      } catch (error) {
        resultText = `The tool failed: ${sanitizeToolError(error)}`;
      }
      toolResultIndexes.push(messages.length);
      messages.push({ role: 'user', content: `Result of ${tool.name}:\n${resultText}` });
    }
    state.navigationEnded = 'step-limit';
  }

  /** Shrinks the oldest tool results until the next call fits; false when even that is not enough. */
  private compactToFit(
    messages: ChatMessage[],
    toolResultIndexes: number[],
    maxTokens: number,
    budget: RunBudget,
  ): boolean {
    for (;;) {
      try {
        checkFitsContext(this.provider, budget, messages, maxTokens);
        return true;
      } catch (error) {
        if (!(error instanceof ContextBudgetError)) throw error;
        const index = toolResultIndexes.shift();
        if (index === undefined) return false;
        messages[index] = {
          role: 'user',
          content: '(An earlier tool result, omitted to save space; what you read is kept for the summary.)',
        };
      }
    }
  }

  private collectMaterial(
    record: PatientRecord,
    kind: DraftKind,
    state: RunState,
    materialTokens: number,
  ): MaterialItem[] {
    const notesByReference = new Map(record.notes.map((note) => [note.reference, note]));
    const lines = resourceLines(record);
    const chosen: MaterialItem[] = [...state.notesRead];
    const structured: string[] = [];
    for (const reference of state.readingList) {
      const note = notesByReference.get(reference) ?? notesByReference.get(`DocumentReference/${reference}`);
      if (note) chosen.push(noteItem(note, this.countTokens));
      else if (lines.has(reference)) structured.push(lines.get(reference)!);
      // Anything else names nothing in this patient's record and is ignored.
    }
    if (structured.length) {
      const text = `Resources the model asked for:\n${structured.join('\n')}`;
      const reference = /^\[([^\]]+)\]/.exec(structured[0])![1];
      chosen.push({ reference, text, tokens: this.countTokens(text) });
    }
    const defaults = defaultNoteOrder(record, kind).map((note) => noteItem(note, this.countTokens));
    return selectMaterial([...chosen, ...defaults], materialTokens, this.countTokens);
  }

  private async extractFacts(
    request: DraftRequest,
    context: {
      budget: RunBudget;
      material: MaterialItem[];
      goal: string;
      focus: string;
    },
  ): Promise<Fact[]> {
    const template = this.prompts.get('fact-extraction');
    const focus = context.focus ? `Focus: ${context.focus.replace(/[\r\n]+/g, ' ')}` : '';
    const overhead =
      this.countTokens(renderPrompt(template, { goal: context.goal, focus, maxFacts: 10, material: '' })) +
      16;
    const maxTokens = this.budgetLimits.maxOutputTokens;
    const capacity = this.promptCapacity(maxTokens) - overhead;
    if (capacity < 200) throw new ContextBudgetError('The context is too small for fact extraction');
    const chunks = packChunks(context.material, capacity, this.countTokens);
    const maxFacts = this.factsPerChunk(chunks.length, maxTokens);
    const facts: Fact[] = [];
    for (const chunk of chunks) {
      request.signal?.throwIfAborted();
      facts.push(
        ...(await this.extractChunk(request, { ...context, chunk, template, focus, maxFacts, maxTokens })),
      );
    }
    return facts;
  }

  /** Facts per chunk: enough to say something, few enough that all chunks' facts fit the write-up. */
  private factsPerChunk(chunkCount: number, maxTokens: number): number {
    const tokensPerFact =
      Math.ceil(this.limits.maxFactLength / 4) + this.limits.maxCitationsPerLine * tokensPerCitation;
    const byOutput = Math.floor((maxTokens - 20) / tokensPerFact);
    const byWriteUp = Math.floor(
      this.promptCapacity(maxTokens) / 2 / Math.max(1, chunkCount) / tokensPerFact,
    );
    return Math.max(2, Math.min(this.limits.maxFactsPerChunk, byOutput, byWriteUp));
  }

  private async extractChunk(
    request: DraftRequest,
    context: {
      budget: RunBudget;
      chunk: MaterialChunk;
      template: PromptTemplate;
      goal: string;
      focus: string;
      maxFacts: number;
      maxTokens: number;
    },
  ): Promise<Fact[]> {
    const { schema, jsonSchema } = factsSchemas(context.chunk.references, context.maxFacts, this.limits);
    const content = renderPrompt(context.template, {
      goal: context.goal,
      focus: context.focus,
      maxFacts: context.maxFacts,
      material: context.chunk.items.map((item) => item.text).join('\n\n'),
    });
    const { value } = await structuredCall({
      provider: this.provider,
      budget: context.budget,
      messages: [{ role: 'user', content }],
      schema,
      jsonSchema,
      schemaName: 'facts',
      maxTokens: context.maxTokens,
      temperature: context.budget.limits.temperature,
      signal: request.signal,
    });
    // A fact may cite only what its chunk showed; the verifier checks the final text again.
    return value.facts
      .map((fact) => ({
        fact: fact.fact,
        citations: fact.citations.filter((citation) => context.chunk.references.includes(citation)),
      }))
      .filter((fact) => fact.citations.length > 0);
  }

  /** The reduce of map-reduce: merges facts in groups until they fit the write-up. */
  private async reduceFacts(
    request: DraftRequest,
    context: {
      budget: RunBudget;
      facts: Fact[];
      goal: string;
      kindPrompt: PromptTemplate;
      essentials: string[];
    },
  ): Promise<Fact[]> {
    const maxTokens = this.budgetLimits.maxOutputTokens;
    const writeUpOverhead =
      this.countTokens(
        renderPrompt(context.kindPrompt, {
          headings: (context.kindPrompt.headings ?? []).join(', '),
          essentials: context.essentials.join('\n'),
          facts: '',
          nudges: nudgeLines(request.nudges),
        }),
      ) + 16;
    const available = this.promptCapacity(maxTokens) - writeUpOverhead;
    let facts = context.facts;
    const template = this.prompts.get('fact-reduction');
    const reductionOverhead =
      this.countTokens(renderPrompt(template, { goal: context.goal, maxFacts: 10, facts: '' })) + 16;
    const groupCapacity = this.promptCapacity(maxTokens) - reductionOverhead;
    for (let round = 0; this.countTokens(factLines(facts)) > available; round++) {
      if (round >= 3) {
        // Still too long after three rounds: keep the first facts (encounter and chosen material come first).
        while (facts.length > 1 && this.countTokens(factLines(facts)) > available) facts = facts.slice(0, -1);
        break;
      }
      const groups: Fact[][] = [[]];
      for (const fact of facts) {
        const group = groups.at(-1)!;
        if (group.length && this.countTokens(factLines([...group, fact])) > groupCapacity)
          groups.push([fact]);
        else group.push(fact);
      }
      const reduced: Fact[] = [];
      const maxFacts = Math.max(2, Math.floor(this.factsPerChunk(groups.length, maxTokens)));
      for (const group of groups) {
        const references = [...new Set(group.flatMap((fact) => fact.citations))];
        const { schema, jsonSchema } = factsSchemas(references, maxFacts, this.limits);
        const { value } = await structuredCall({
          provider: this.provider,
          budget: context.budget,
          messages: [
            {
              role: 'user',
              content: renderPrompt(template, { goal: context.goal, maxFacts, facts: factLines(group) }),
            },
          ],
          schema,
          jsonSchema,
          schemaName: 'facts',
          maxTokens,
          temperature: context.budget.limits.temperature,
          signal: request.signal,
        });
        reduced.push(
          ...value.facts
            .map((fact) => ({
              fact: fact.fact,
              citations: fact.citations.filter((citation) => references.includes(citation)),
            }))
            .filter((fact) => fact.citations.length > 0),
        );
      }
      facts = reduced;
    }
    return facts;
  }

  private async writeUp(
    request: DraftRequest,
    context: {
      budget: RunBudget;
      facts: Fact[];
      kindPrompt: PromptTemplate;
      essentials: string[];
      shown: Set<string>;
    },
  ): Promise<string> {
    const headings = kindHeadings(context.kindPrompt);
    const ruleIds = request.nudges.map((nudge) => nudge.ruleId);
    const references = [...context.shown];
    const { schema, jsonSchema } = writeUpSchemas(headings, references, ruleIds, this.limits);
    const content = renderPrompt(context.kindPrompt, {
      headings: headings.join(', '),
      essentials: context.essentials.join('\n') || '(none recorded)',
      facts: factLines(context.facts) || '(no facts were extracted)',
      nudges: nudgeLines(request.nudges),
    });
    const { value } = await structuredCall({
      provider: this.provider,
      budget: context.budget,
      messages: [{ role: 'user', content }],
      schema,
      jsonSchema,
      schemaName: 'draft',
      maxTokens: this.budgetLimits.maxOutputTokens,
      temperature: context.budget.limits.temperature,
      signal: request.signal,
    });
    const lines: string[] = [];
    for (const heading of headings) {
      // A line with no words says nothing, whatever it cites.
      const sectionLines = value.sections
        .filter((section) => section.heading === heading)
        .flatMap((section) => section.lines)
        .filter((line) => line.text.trim() !== '');
      if (sectionLines.length === 0) continue;
      lines.push(`## ${heading}`);
      for (const line of sectionLines) {
        // A citation that is not a plain `Type/id` could carry text or line breaks of its own: a line
        // with one keeps none of its given citations, so the verifier removes it unless its text cites.
        const given = line.citations.every((citation) => referencePattern.test(citation))
          ? line.citations
          : [];
        const citations = given.map((citation) => `[${citation}]`).join(' ');
        // Every sentence carries the citations the model gave its line, so the verifier checks each one.
        for (const sentence of sentencesOf(line.text)) {
          lines.push(`- ${sentence}${citations ? ` ${citations}` : ''}`);
        }
      }
      lines.push('');
    }
    if (request.nudges.length) {
      // Rules decided these; every one appears, in the model's words when it gave them, else the rule's.
      // Same heading and rule tag as the extractive engine: the review app and nudge outcomes read them.
      lines.push(`## ${suggestedActionsHeading}`);
      for (const nudge of request.nudges) {
        const worded = value.suggestions
          .find((suggestion) => suggestion.ruleId === nudge.ruleId)
          ?.text.replace(lineBreaking, ' ')
          .trim();
        // A rule's action may be filled from record values: inert, like any record text.
        const text = worded || oneLine(`${nudge.title}: ${nudge.suggestedAction}`, 400);
        const grade = nudge.guideline.grade ? `, grade ${nudge.guideline.grade}` : '';
        const evidence = nudge.evidence.map((reference) => `[${reference}]`).join(' ');
        lines.push(
          `- ${text} (${nudge.guideline.label}${grade}; rule ${nudge.ruleId} v${nudge.ruleVersion}) ${evidence}`.trim(),
        );
      }
    }
    return lines.join('\n');
  }
}
