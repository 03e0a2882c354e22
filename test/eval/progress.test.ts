import { describe, expect, it } from 'vitest';
import { progressBar } from '../../src/eval/progress.ts';

/** The progress bar redraws in place on a terminal and writes a line per tenth of the work to a log. */
function stream(isTTY: boolean) {
  const written: string[] = [];
  return {
    written,
    stream: { isTTY, write: (text: string) => written.push(text) } as unknown as NodeJS.WriteStream,
  };
}

describe('eval progress', () => {
  it('redraws one line on a terminal', () => {
    const terminal = stream(true);
    const bar = progressBar(terminal.stream);
    bar.start(4);
    for (let index = 0; index < 4; index++) bar.tick('scripted');
    bar.done();
    expect(terminal.written.slice(0, 4).every((text) => text.startsWith('\r['))).toBe(true);
    expect(terminal.written[3]).toContain('[##############################] 4/4 scripted');
    expect(terminal.written.at(-1)).toBe('\n');
  });

  it('writes a line per tenth of the work to a pipe', () => {
    const pipe = stream(false);
    const bar = progressBar(pipe.stream);
    bar.start(100);
    for (let index = 0; index < 100; index++) bar.tick('extractive');
    bar.done();
    // The first draft, then one line as each tenth completes.
    expect(pipe.written).toHaveLength(11);
    expect(pipe.written.every((text) => text.endsWith('\n') && !text.includes('\r'))).toBe(true);
    expect(pipe.written.at(-1)).toBe('eval: 100/100 drafts (extractive)\n');
  });
});
