import { AIMessage, type BaseMessage, ToolMessage } from '@langchain/core/messages';
import { createMiddleware } from 'langchain';
import { z } from 'zod';
import type { ModelCallMeter, TokenUsage } from '../../src/model/provider.ts';
import { dropNulls } from '../grammar-schema.ts';
import { ContextBudgetError, InvalidModelOutputError } from '../model-errors.ts';
import { sanitizeToolError } from '../record-tools.ts';
import type { RunBudget } from '../run-budget.ts';

/**
 * The record navigator's bounds as LangChain middleware, beside `modelCallLimitMiddleware` (the step
 * limit): the tool-call budget, the prompt-token allowance of the navigation, the context (oldest tool
 * results shrink until the next step fits), and tool errors the model can react to without stack
 * traces or file paths. Running into a bound ends navigation quietly: the draft goes on with what was read.
 */
export type NavigationEnd =
  | 'reading-list'
  | 'step-limit'
  | 'context-full'
  | 'token-allowance'
  | 'invalid-step'
  | 'no-reading-list';

class NavigationAllowanceSpentError extends Error {
  constructor() {
    super("The navigation's prompt-token allowance is spent");
    this.name = 'NavigationAllowanceSpentError';
  }
}

/**
 * The run's meter during navigation: also refuses a step once the steps after the first have sent
 * more prompt tokens than the draft's navigation allowance. A step's repair call is the run's to
 * count, not the allowance's.
 */
export class NavigationMeter implements ModelCallMeter {
  private readonly run: RunBudget;
  private readonly allowance: number;
  private firstStepTokens: number | undefined;
  private spentTokens = 0;
  private stepStarting = false;

  constructor(run: RunBudget, allowance: number) {
    this.run = run;
    this.allowance = allowance;
  }

  /** The next call that fits the context is a step's first. */
  beginStep(): void {
    this.stepStarting = true;
  }

  beforeCall(call: { promptTokens: number; maxTokens: number }): void {
    this.run.checkFitsContext(call.promptTokens, call.maxTokens);
    if (this.stepStarting) {
      if (
        this.firstStepTokens !== undefined &&
        this.spentTokens + call.promptTokens > this.firstStepTokens + this.allowance
      ) {
        throw new NavigationAllowanceSpentError();
      }
    }
    this.run.beforeCall(call);
    if (this.stepStarting) {
      this.stepStarting = false;
      this.firstStepTokens ??= call.promptTokens;
      this.spentTokens += call.promptTokens;
    }
  }

  afterCall(usage: TokenUsage): void {
    this.run.afterCall(usage);
  }
}

const omittedResult =
  '(An earlier tool result, omitted to save space; what you read is kept for the summary.)';

/** The messages with the oldest tool result not yet shrunk replaced by a placeholder; undefined when none is left. */
function withoutOldestToolResult(messages: BaseMessage[]): BaseMessage[] | undefined {
  const index = messages.findIndex(
    (message) => ToolMessage.isInstance(message) && message.content !== omittedResult,
  );
  if (index < 0) return undefined;
  const old = messages[index] as ToolMessage;
  const copy = [...messages];
  copy[index] = new ToolMessage({ content: omittedResult, tool_call_id: old.tool_call_id, name: old.name });
  return copy;
}

export function navigationGuardMiddleware(options: {
  budget: RunBudget;
  /** The tool that ends navigation with its reading list (never counted against the tool budget). */
  readingListTool: string;
  onStep: () => void;
  onEnd: (reason: NavigationEnd) => void;
}) {
  const end = (reason: NavigationEnd) => {
    options.onEnd(reason);
    // An answer without tool calls ends the agent loop.
    return new AIMessage(`Reading stopped (${reason}).`);
  };
  return createMiddleware({
    name: 'NavigationGuard',
    wrapModelCall: async (request, handler) => {
      options.onStep();
      let messages = request.messages;
      for (;;) {
        try {
          return await handler({ ...request, messages });
        } catch (error) {
          if (error instanceof ContextBudgetError) {
            const shrunk = withoutOldestToolResult(messages);
            if (shrunk) {
              messages = shrunk;
              continue;
            }
            return end('context-full');
          }
          if (error instanceof NavigationAllowanceSpentError) return end('token-allowance');
          // An invalid step ends navigation cleanly; extraction falls back to code's choice of material.
          if (error instanceof InvalidModelOutputError) return end('invalid-step');
          throw error;
        }
      }
    },
    wrapToolCall: async (request, handler) => {
      // Models send null for an optional argument they leave out (strict tool schemas make them nullable).
      const toolCall = {
        ...request.toolCall,
        args: dropNulls(request.toolCall.args) as Record<string, unknown>,
      };
      const refuse = (content: string) =>
        new ToolMessage({ content, tool_call_id: toolCall.id ?? '', name: toolCall.name, status: 'error' });
      if (!request.tool) return refuse(`There is no tool ${toolCall.name.slice(0, 60)}.`);
      if (!options.budget.canCallTool()) {
        return refuse(`The tool budget is spent. Call ${options.readingListTool} now.`);
      }
      options.budget.toolCalls += 1;
      const schema = (request.tool as { schema?: unknown }).schema;
      if (schema instanceof z.ZodType) {
        const checked = schema.safeParse(toolCall.args);
        if (!checked.success) {
          const issues = checked.error.issues
            .slice(0, 4)
            .map((issue) => `${issue.path.join('.') || 'args'}: ${issue.message}`)
            .join('; ');
          return refuse(`The arguments do not fit ${toolCall.name}: ${issues}`);
        }
      }
      try {
        return await handler({ ...request, toolCall });
      } catch (error) {
        return refuse(`The tool failed: ${sanitizeToolError(error)}`);
      }
    },
  });
}
