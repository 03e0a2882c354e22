import type { AgentBudget } from '../src/model/model-config.ts';
import type { TokenUsage } from '../src/model/provider.ts';

/**
 * Counts what one agent run has spent. Navigation simply stops when its steps or tool calls run
 * out; running out of model calls or tokens ends the run with an error the pipeline can act on
 * (fall back to the extractive engine), because a half-written summary is worse than none.
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

export class RunBudget {
  readonly limits: AgentBudget;
  modelCalls = 0;
  toolCalls = 0;
  steps = 0;
  promptTokens = 0;
  completionTokens = 0;
  /** The largest prompt + maxTokens any single call asked for: must never exceed the context. */
  largestCallTokens = 0;

  constructor(limits: AgentBudget) {
    this.limits = limits;
  }

  get totalTokens(): number {
    return this.promptTokens + this.completionTokens;
  }

  /** Called before every model call with what it will cost at most. */
  reserveModelCall(promptTokens: number, maxTokens: number): void {
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

  record(usage: TokenUsage): void {
    this.promptTokens += usage.promptTokens;
    this.completionTokens += usage.completionTokens;
  }

  canTakeStep(): boolean {
    return this.steps < this.limits.maxSteps;
  }

  canCallTool(): boolean {
    return this.toolCalls < this.limits.maxToolCalls;
  }
}
