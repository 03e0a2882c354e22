import { type FSWatcher, statSync, watch } from 'node:fs';
import path from 'node:path';
import type { Logger } from '../log.ts';
import { cqlSubdirectory, loadRuleSet, type RuleSetSource, ruleSourceDigest } from './rule-loader.ts';
import { formatLoadError, type RuleLoadError, type RuleSet, type RuleSetLoadResult } from './rule-set.ts';

/**
 * Holds the rule set the service runs and reloads it when its files change. A set that does not
 * load completely is refused and logged; the last valid set keeps serving.
 *
 * Change detection cannot depend on file handles: `sed -i`, most editors and `mv` replace a file by
 * a new inode, after which a watch on the old one (what Node's recursive watch does on Linux) never
 * fires again. So the folders are watched (their entries are seen by name, whatever the inode), any
 * event only schedules a content-hash comparison, and a periodic rescan compares the hash too, for the
 * events a file system never delivers (network mounts, a replaced folder, a dropped inotify queue).
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
  /** Compare the files' content hash this often even without events (0: never). Default 30 s when watching. */
  rescanIntervalMs?: number;
  onReload?: (ruleSet: RuleSet) => void;
  onRefused?: (errors: RuleLoadError[]) => void;
  /** A last say over a set that loaded (a rule version's logic must not change): errors refuse it. */
  admit?: (ruleSet: RuleSet) => Promise<RuleLoadError[]>;
}

export const defaultRescanIntervalMs = 30_000;

/** What an operator needs to know which logic serves: the fingerprint and every rule's version. */
export function ruleVersions(ruleSet: RuleSet): Record<string, string> {
  return Object.fromEntries(ruleSet.rules.map((rule) => [rule.document.id, rule.document.version]));
}

/** Loads the set once (throwing when the first load fails: the service must not start without rules). */
export async function createRuleSetHolder(
  source: RuleSetSource,
  options: WatchOptions,
): Promise<RuleSetHolder> {
  const load = async (): Promise<RuleSetLoadResult> => {
    const result = await loadRuleSet(source);
    if (!result.ok || !options.admit) return result;
    const errors = await options.admit(result.ruleSet);
    return errors.length > 0 ? { ok: false, errors } : result;
  };
  const firstDigest = await ruleSourceDigest(source);
  const first = await load();
  if (!first.ok) {
    throw new Error(`rule set refused:\n${first.errors.map(formatLoadError).join('\n')}`);
  }
  let current = first.ruleSet;
  // The content last loaded or refused: the same content is neither reloaded nor refused twice.
  let lastDigest = firstDigest;
  options.logger.info(
    { rules: current.rules.length, fingerprint: current.fingerprint, versions: ruleVersions(current) },
    'rule set loaded',
  );
  let timer: NodeJS.Timeout | undefined;
  let rescanTimer: NodeJS.Timeout | undefined;
  let closed = false;
  let reloading: Promise<unknown> = Promise.resolve();

  const reload = async (reason: string, digest?: string) => {
    lastDigest = digest ?? (await ruleSourceDigest(source));
    const result = await load();
    if (result.ok) {
      const previous = current;
      current = result.ruleSet;
      if (result.ruleSet.fingerprint !== previous.fingerprint) {
        options.logger.info(
          {
            reason,
            rules: current.rules.length,
            fingerprint: current.fingerprint,
            previousFingerprint: previous.fingerprint,
            versions: ruleVersions(current),
          },
          'rule set reloaded',
        );
        options.onReload?.(current);
      }
    } else {
      options.logger.error(
        { reason, errors: result.errors.map(formatLoadError), servingFingerprint: current.fingerprint },
        'rule set refused; the last valid set keeps serving',
      );
      options.onRefused?.(result.errors);
    }
    return result;
  };

  const reloadIfChanged = async (reason: string) => {
    if (closed) return;
    const digest = await ruleSourceDigest(source);
    if (digest === lastDigest) return;
    await reload(reason, digest);
  };
  const enqueue = (reason: string) => {
    const next = reloading.then(
      () => reloadIfChanged(reason),
      () => reloadIfChanged(reason),
    );
    reloading = next.catch((error: unknown) =>
      options.logger.warn(
        { err: error instanceof Error ? error.message : String(error) },
        'rule files could not be read',
      ),
    );
  };

  // Folder -> its watcher and the inode it was opened on (a replaced folder is watched again).
  const watchers = new Map<string, { watcher: FSWatcher; inode: number }>();
  const schedule = () => {
    clearTimeout(timer);
    timer = setTimeout(() => {
      // A folder created or replaced since (a new cql/, a swapped mount) is watched from now on.
      refreshWatchers();
      enqueue('change');
    }, options.debounceMs ?? 200);
  };
  const watchedFolders = () => {
    const folders = [source.directory, path.join(source.directory, cqlSubdirectory)];
    if (source.valueSetFile) folders.push(path.dirname(source.valueSetFile));
    return [...new Set(folders.map((folder) => path.resolve(folder)))];
  };
  const refreshWatchers = () => {
    if (closed) return;
    for (const folder of watchedFolders()) {
      let inode: number | undefined;
      try {
        inode = statSync(folder).ino;
      } catch {
        inode = undefined;
      }
      const existing = watchers.get(folder);
      if (existing && existing.inode === inode) continue;
      existing?.watcher.close();
      watchers.delete(folder);
      if (inode === undefined) continue;
      try {
        const watcher = watch(folder, { persistent: false }, schedule);
        watcher.on('error', (error) => {
          options.logger.warn({ folder, err: error.message }, 'rules folder watch failed; rescans continue');
          watcher.close();
          watchers.delete(folder);
        });
        watchers.set(folder, { watcher, inode });
      } catch (error) {
        options.logger.warn(
          { folder, err: error instanceof Error ? error.message : String(error) },
          'rules folder cannot be watched; rescans continue',
        );
      }
    }
  };

  const watching = options.watch ?? true;
  if (watching) refreshWatchers();
  const rescanIntervalMs = options.rescanIntervalMs ?? (watching ? defaultRescanIntervalMs : 0);
  if (rescanIntervalMs > 0) {
    const rescan = () => {
      rescanTimer = setTimeout(() => {
        if (watching) refreshWatchers();
        enqueue('rescan');
        reloading.finally(() => {
          if (!closed) rescan();
        });
      }, rescanIntervalMs);
      rescanTimer.unref();
    };
    rescan();
  }

  return {
    current: () => current,
    reload: () => {
      const next = reloading.then(
        () => reload('request'),
        () => reload('request'),
      );
      reloading = next.catch(() => undefined);
      return next;
    },
    close() {
      closed = true;
      clearTimeout(timer);
      clearTimeout(rescanTimer);
      for (const { watcher } of watchers.values()) watcher.close();
      watchers.clear();
    },
  };
}
