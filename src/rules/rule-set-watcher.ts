import { type FSWatcher, watch } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { loadRuleSet, type RuleSetSource } from './rule-loader.ts';
import { formatLoadError, type RuleLoadError, type RuleSet } from './rule-set.ts';

/**
 * Holds the rule set the service runs and reloads it when its files change. A set that does not
 * load completely is refused and logged; the last valid set keeps serving.
 */
export interface RuleSetHolder {
  current(): RuleSet;
  /** Loads the files now; resolves with the errors when the new set was refused. */
  reload(): Promise<{ ok: true; ruleSet: RuleSet } | { ok: false; errors: RuleLoadError[] }>;
  close(): void;
}

export interface WatchOptions {
  logger: Logger;
  /** Wait this long after the last change before reloading (editors write files in several steps). */
  debounceMs?: number;
  watch?: boolean;
  onReload?: (ruleSet: RuleSet) => void;
  onRefused?: (errors: RuleLoadError[]) => void;
}

/** Loads the set once (throwing when the first load fails: the service must not start without rules). */
export async function createRuleSetHolder(
  source: RuleSetSource,
  options: WatchOptions,
): Promise<RuleSetHolder> {
  const first = await loadRuleSet(source);
  if (!first.ok) {
    throw new Error(`rule set refused:\n${first.errors.map(formatLoadError).join('\n')}`);
  }
  let current = first.ruleSet;
  options.logger.info({ rules: current.rules.length, fingerprint: current.fingerprint }, 'rule set loaded');
  let timer: NodeJS.Timeout | undefined;
  let reloading: Promise<unknown> = Promise.resolve();

  const reload = async () => {
    const result = await loadRuleSet(source);
    if (result.ok) {
      const changed = result.ruleSet.fingerprint !== current.fingerprint;
      current = result.ruleSet;
      if (changed) {
        options.logger.info(
          { rules: current.rules.length, fingerprint: current.fingerprint },
          'rule set reloaded',
        );
        options.onReload?.(current);
      }
    } else {
      options.logger.error(
        { errors: result.errors.map(formatLoadError), servingFingerprint: current.fingerprint },
        'rule set refused; the last valid set keeps serving',
      );
      options.onRefused?.(result.errors);
    }
    return result;
  };

  const watchers: FSWatcher[] = [];
  if (options.watch ?? true) {
    const schedule = () => {
      clearTimeout(timer);
      timer = setTimeout(() => {
        reloading = reloading.then(reload, reload);
      }, options.debounceMs ?? 200);
    };
    watchers.push(watch(source.directory, { recursive: true }, schedule));
    if (
      source.valueSetFile &&
      !path.resolve(source.valueSetFile).startsWith(path.resolve(source.directory))
    ) {
      watchers.push(watch(source.valueSetFile, schedule));
    }
    for (const watcher of watchers) {
      watcher.on('error', (error) =>
        options.logger.warn({ err: error.message }, 'rules folder watch failed'),
      );
    }
  }

  return {
    current: () => current,
    reload: () => {
      const next = reloading.then(reload, reload);
      reloading = next;
      return next;
    },
    close() {
      clearTimeout(timer);
      for (const watcher of watchers) watcher.close();
    },
  };
}
