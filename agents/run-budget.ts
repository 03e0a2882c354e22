import type { AgentBudget } from '../src/model/model-config.ts';
import type { ModelCallMeter, TokenUsage } from '../src/model/provider.ts';
import { ContextBudgetError } from './model-errors.ts';

/**
 * Counts what one agent run has spent, as the meter every model call of the run goes through. Running
 * out of model calls or tokens ends the run with an error the pipeline can act on (fall back to the
 * extractive engine), because a half-written summary is worse than none; a call that would not fit
 * the context is refused before it is sent (an automatic context shift would drop the instructions).
 */
export class AgentBudgetExceededError extends Error {
  readonly isRetryable = false;
  readonly code = 'budget-exceeded';
  readonly limit: 'model-calls' | 'tokens';

  constructor(limit: 'model-calls' | 'tokens', message: string) {
    super(message);
    this.name = 'AgentBudgetExceededError';
    this.limit = limit;
  }
}

export class RunBudget implements ModelCallMeter {
  readonly limits: AgentBudget;
  readonly contextSize: number;
  modelCalls = 0;
  toolCalls = 0;
  promptTokens = 0;
  completionTokens = 0;
  /** The largest prompt + maxTokens any single call asked for: must never exceed the context. */
  largestCallTokens = 0;

  constructor(limits: AgentBudget, contextSize: number) {
    this.limits = limits;
    this.contextSize = contextSize;
  }

  get totalTokens(): number {
    return this.promptTokens + this.completionTokens;
  }

  /** Tokens a call may fill with prompt: the context minus its output and the safety margin. */
  promptCapacity(maxTokens: number): number {
    return this.contextSize - maxTokens - this.limits.safetyMarginTokens;
  }

  checkFitsContext(promptTokens: number, maxTokens: number): void {
    if (promptTokens > this.promptCapacity(maxTokens)) {
      throw new ContextBudgetError(
        `A call of ${promptTokens} prompt tokens and ${maxTokens} output tokens would not fit the context of ${this.contextSize}`,
      );
    }
  }

  beforeCall({ promptTokens, maxTokens }: { promptTokens: number; maxTokens: number }): void {
    this.checkFitsContext(promptTokens, maxTokens);
    if (this.modelCalls + 1 > this.limits.maxModelCalls) {
      throw new AgentBudgetExceededError(
        'model-calls',
        `The run would exceed ${this.limits.maxModelCalls} model calls`,
      );
    }
    if (this.totalTokens + promptTokens + maxTokens > this.limits.maxTotalTokens) {
      throw new AgentBudgetExceededError(
        'tokens',
        `The run would exceed ${this.limits.maxTotalTokens} tokens`,
      );
    }
    this.modelCalls += 1;
    this.largestCallTokens = Math.max(this.largestCallTokens, promptTokens + maxTokens);
  }

  afterCall(usage: TokenUsage): void {
    this.promptTokens += usage.promptTokens;
    this.completionTokens += usage.completionTokens;
  }

  canCallTool(): boolean {
    return this.toolCalls < this.limits.maxToolCalls;
  }
}
