import { type PatientRecord, retrievedVersions } from '../fhir/patient-record.ts';
import type { Logger } from '../src/log.ts';
import type { AgentBudget } from '../src/model/model-config.ts';
import type { ModelProvider } from '../src/model/provider.ts';
import { withheldNotice } from './clinical-content-policy.ts';
import type { DraftEngine, DraftKind, DraftRequest, DraftResult } from './draft-engine.ts';
import { constrainedJsonModel, type DraftModel } from './draft-model.ts';
import { planDraft } from './draft-plan.ts';
import { citedIn, patientAnswerSections } from './intake-answers.ts';
import type { StepSchemaStyle } from './langchain/step-protocol.ts';
import { defaultOutputLimits, modelHeadingLines, type OutputLimits } from './output-schemas.ts';
import type { PromptLibrary } from './prompt-library.ts';
import { renderPrompt } from './prompt-library.ts';
import { buildManifest } from './record-manifest.ts';
import { RunBudget } from './run-budget.ts';
import { extractFacts } from './steps/extract-facts.ts';
import { maximumReadingList, navigate, readingListToolName } from './steps/navigate.ts';
import { reduceFacts } from './steps/reduce-facts.ts';
import { selectDraftMaterial } from './steps/select-material.ts';
import type { StageContext } from './steps/stage-context.ts';
import { kindHeadings, writeDraftText, writeUpOverhead } from './steps/write-up.ts';

/**
 * The model agents (progress-note summary, pre-visit briefing) as one DraftEngine, after Google's
 * MedGemma EHR navigator, in five steps (agents/steps/): code builds a manifest; the model navigates
 * the record with read-only tools in a LangChain agent and names what to read; code selects the
 * material; facts are extracted chunk by chunk with `[Type/id]` citations (map), merged if they
 * overflow (reduce); a last call writes the draft. The engine reports what it showed the model; the
 * pipeline's verifier then removes every line that cites nothing, or anything the model was not shown.
 */
type MedGemmaEngineOptions = {
  prompts: PromptLibrary;
  budget: AgentBudget;
  logger: Logger;
  limits?: Partial<OutputLimits>;
  engineVersion?: string;
} & (
  | { model: DraftModel }
  /** MedGemma through the constrained-JSON adapter; 'flat' step schemas for remote servers. */
  | { provider: ModelProvider; stepSchemaStyle?: StepSchemaStyle }
);

const kindPromptIds: Record<DraftKind, string> = {
  'progress-summary': 'progress-summary',
  'previsit-briefing': 'previsit-briefing',
};

const titles: Record<DraftKind, string> = {
  'progress-summary': 'Progress note summary (AI draft, needs review)',
  'previsit-briefing': 'Pre-visit briefing (AI draft, needs review)',
};

/** Share of the context the manifest may take in the navigation prompt. */
const manifestShare = 0.4;

export class MedGemmaEngine implements DraftEngine {
  readonly id = 'medgemma-agent';
  readonly version: string;
  private readonly model: DraftModel;
  private readonly prompts: PromptLibrary;
  private readonly budgetLimits: AgentBudget;
  private readonly logger: Logger;
  private readonly limits: OutputLimits;

  constructor(options: MedGemmaEngineOptions) {
    this.prompts = options.prompts;
    this.budgetLimits = options.budget;
    this.logger = options.logger;
    this.limits = { ...defaultOutputLimits, ...options.limits };
    this.version = options.engineVersion ?? '1.0.0';
    this.model =
      'model' in options
        ? options.model
        : constrainedJsonModel(options.provider, {
            prompts: options.prompts,
            stepSchemaStyle: options.stepSchemaStyle,
            maxStringLength: this.limits.maxStringLength,
          });
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

  async draft(request: DraftRequest): Promise<DraftResult> {
    const { record, kind, signal } = request;
    const countTokens = (text: string) => this.model.countTokens(text);
    const budget = new RunBudget(this.budgetLimits, this.model.contextSize);
    const kindPrompt = this.prompts.get(kindPromptIds[kind]);
    const goal = kindPrompt.goal ?? '';
    const plan = planDraft(record, this.budgetLimits);

    const navigatorOverhead = countTokens(
      renderPrompt(this.prompts.get('record-navigator'), {
        goal,
        readingListTool: readingListToolName,
        manifest: '',
        maxReads: maximumReadingList,
        maxSteps: 99,
      }),
    );
    const manifest = buildManifest(record, kind, {
      maxTokens: Math.max(
        200,
        Math.min(
          plan.manifestTokens,
          Math.floor(this.model.contextSize * manifestShare),
          budget.promptCapacity(this.budgetLimits.maxOutputTokens) - navigatorOverhead - 600,
        ),
      ),
      countTokens,
    });
    const navigation = await navigate({
      model: this.model,
      budget,
      prompts: this.prompts,
      record,
      manifest,
      plan,
      goal,
      signal,
    });
    const material = selectDraftMaterial({
      record,
      kind,
      navigation,
      materialTokens: plan.materialTokens,
      countTokens,
    });

    const context: StageContext = {
      chatModel: this.model.createChatModel({
        meter: budget,
        maxTokens: this.budgetLimits.maxOutputTokens,
        temperature: this.budgetLimits.temperature,
      }),
      budget,
      prompts: this.prompts,
      countTokens,
      limits: this.limits,
      maxTokens: this.budgetLimits.maxOutputTokens,
      signal,
    };
    const extracted = await extractFacts(context, { material, goal, focus: navigation.focus });
    const facts = await reduceFacts(context, {
      facts: extracted,
      goal,
      writeUpOverhead: writeUpOverhead(context, {
        kindPrompt,
        essentials: manifest.essentials,
        nudges: request.nudges,
      }),
    });
    const shown = this.shownInRun(record, request, [
      ...manifest.references,
      ...navigation.shown,
      ...material.map((item) => item.reference),
    ]);
    const written = await writeDraftText(context, {
      kindPrompt,
      facts,
      essentials: manifest.essentials,
      nudges: request.nudges,
      citable: shown,
    });
    // The model never saw what the site's policy left out; the draft still says that something was.
    const withheld = withheldNotice(record);
    // The patient's pre-visit answers are quoted as given after the model's text, never reworded by the model.
    const answers = kind === 'previsit-briefing' ? patientAnswerSections(record) : [];
    const text = [written, ...answers, ...(withheld ? ['', withheld] : [])].join('\n');
    for (const line of answers) shown.push(...citedIn(line));
    if (withheld) shown.push(`Patient/${record.patient.id}`);
    this.logger.info(
      {
        kind,
        encounterId: record.encounter.id,
        modelCalls: budget.modelCalls,
        toolCalls: budget.toolCalls,
        steps: navigation.steps,
        materialItems: material.length,
        facts: facts.length,
        navigationEnded: navigation.ended,
      },
      'model draft written',
    );
    const promptIds = ['record-navigator', 'fact-extraction', 'fact-reduction', kindPrompt.id];
    return {
      kind,
      title: titles[kind],
      text,
      headings: modelHeadingLines(kindHeadings(kindPrompt)),
      shown,
      engine: { id: this.id, version: this.version, model: this.model.modelId },
      prompt: { id: kindPrompt.id, version: kindPrompt.version },
      prompts: [
        ...promptIds.map((id) => ({ id, version: this.prompts.get(id).version })),
        ...this.model.protocolPrompts,
      ],
      usage: {
        modelCalls: budget.modelCalls,
        promptTokens: budget.promptTokens,
        completionTokens: budget.completionTokens,
      },
    };
  }

  /**
   * What the run showed the model, and so what its draft may cite: the manifest, tool results, the
   * material, and the retrieved evidence of the nudges the write-up is given.
   */
  private shownInRun(record: PatientRecord, request: DraftRequest, references: string[]): string[] {
    const shown = new Set(references);
    const retrieved = new Set(retrievedVersions(record).keys());
    for (const nudge of request.nudges) {
      for (const reference of nudge.evidence) if (retrieved.has(reference)) shown.add(reference);
    }
    return [...shown];
  }
}
