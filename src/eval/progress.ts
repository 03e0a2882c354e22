/**
 * A progress bar on stderr: redrawn in place on a terminal; on a pipe or a CI log, a plain line at every
 * tenth of the work, so logs stay readable. Never carries patient data: counts and configuration names.
 */
export interface Progress {
  start(total: number): void;
  tick(label: string): void;
  done(): void;
}

export function progressBar(stream: NodeJS.WriteStream = process.stderr): Progress {
  let total = 0;
  let completed = 0;
  let lastTenth = -1;
  const width = 30;
  return {
    start(count) {
      total = count;
      completed = 0;
      lastTenth = -1;
    },
    tick(label) {
      completed += 1;
      const share = total === 0 ? 1 : completed / total;
      if (stream.isTTY) {
        const filled = Math.round(share * width);
        stream.write(
          `\r[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${completed}/${total} ${label}`.padEnd(80),
        );
        return;
      }
      const tenth = Math.floor(share * 10);
      if (tenth !== lastTenth) {
        lastTenth = tenth;
        stream.write(`eval: ${completed}/${total} drafts (${label})\n`);
      }
    },
    done() {
      if (stream.isTTY) stream.write('\n');
    },
  };
}

export const silentProgress: Progress = { start() {}, tick() {}, done() {} };
