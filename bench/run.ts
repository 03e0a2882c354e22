import { readdirSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * `npm run bench [name...]`: runs each benchmark in bench/ (a module exporting `run()`), one after the
 * other so they do not compete for the two cores, and prints one JSON document with every figure
 * next to the baseline it was measured against in the same run.
 */
const directory = path.dirname(fileURLToPath(import.meta.url));
const wanted = process.argv.slice(2);
const names = readdirSync(directory)
  .filter((file) => file.endsWith('.ts') && file !== 'run.ts' && !file.includes('.support.'))
  .map((file) => file.replace(/\.ts$/, ''))
  .filter((name) => wanted.length === 0 || wanted.includes(name))
  .sort();

const results: Record<string, unknown> = {
  machine: {
    node: process.version,
    cpus: (await import('node:os')).cpus().length,
    date: new Date().toISOString(),
  },
};
for (const name of names) {
  const module = (await import(path.join(directory, `${name}.ts`))) as {
    run?: () => Promise<Record<string, unknown>>;
  };
  if (typeof module.run !== 'function') continue;
  process.stderr.write(`bench: ${name}...\n`);
  const startedAt = performance.now();
  try {
    results[name] = {
      ...(await module.run()),
      benchSeconds: Number(((performance.now() - startedAt) / 1000).toFixed(1)),
    };
  } catch (error) {
    results[name] = { error: error instanceof Error ? error.message : String(error) };
  }
}
console.log(JSON.stringify(results, null, 2));
