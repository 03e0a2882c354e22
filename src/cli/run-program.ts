import type { Command } from 'commander';

/**
 * Runs a CLI program the same way for every command: help and version exit 0, usage errors exit with
 * commander's code, anything else prints its message (never a stack trace full of paths) and exits 1.
 */
export async function runProgram(program: Command): Promise<void> {
  try {
    await program.parseAsync(process.argv);
  } catch (error) {
    const code = (error as { code?: string }).code;
    if (code === 'commander.helpDisplayed' || code === 'commander.version') process.exit(0);
    if (code?.startsWith('commander.')) process.exit((error as { exitCode?: number }).exitCode ?? 1);
    process.stderr.write(`${error instanceof Error ? error.message : String(error)}\n`);
    process.exit(1);
  }
}
