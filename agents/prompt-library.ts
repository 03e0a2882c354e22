import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';

/**
 * Prompt templates live as files in prompts/, each with an id and a version in YAML front matter.
 * They are loaded once at start; the id and version of what was used go into the AI Provenance.
 */
const frontMatterSchema = z
  .object({
    id: z.string().regex(/^[a-z0-9-]+$/),
    version: z.string().min(1),
    description: z.string().optional(),
    goal: z.string().optional(),
    headings: z.array(z.string().min(1)).optional(),
  })
  .strict();

export type PromptTemplate = z.infer<typeof frontMatterSchema> & { body: string; file: string };

const defaultPromptDirectory = join(dirname(fileURLToPath(import.meta.url)), '..', 'prompts');

export function parsePromptFile(text: string, file: string): PromptTemplate {
  const match = /^---\n([\s\S]*?)\n---\n([\s\S]*)$/.exec(text.replace(/\r\n/g, '\n'));
  if (!match) throw new Error(`Prompt file ${file} has no front matter`);
  const frontMatter = frontMatterSchema.safeParse(parseYaml(match[1]));
  if (!frontMatter.success)
    throw new Error(`Prompt file ${file} has invalid front matter: ${frontMatter.error.message}`);
  return { ...frontMatter.data, body: match[2].trim(), file };
}

export class PromptLibrary {
  private readonly templates: Map<string, PromptTemplate>;

  constructor(templates: PromptTemplate[]) {
    this.templates = new Map();
    for (const template of templates) {
      if (this.templates.has(template.id)) throw new Error(`Two prompt files have the id ${template.id}`);
      this.templates.set(template.id, template);
    }
  }

  static load(directory = defaultPromptDirectory): PromptLibrary {
    const files = readdirSync(directory).filter((name) => name.endsWith('.md'));
    return new PromptLibrary(
      files.map((name) => parsePromptFile(readFileSync(join(directory, name), 'utf8'), name)),
    );
  }

  get(id: string): PromptTemplate {
    const template = this.templates.get(id);
    if (!template) throw new Error(`No prompt with id ${id}`);
    return template;
  }
}

/** Fills `{{name}}` placeholders; a missing or unused value is a bug in the caller, so it throws. */
export function renderPrompt(template: PromptTemplate, values: Record<string, string | number>): string {
  const used = new Set<string>();
  const text = template.body.replace(/\{\{(\w+)\}\}/g, (_, name: string) => {
    if (!(name in values)) throw new Error(`Prompt ${template.id} needs a value for ${name}`);
    used.add(name);
    return String(values[name]);
  });
  const unused = Object.keys(values).filter((name) => !used.has(name));
  if (unused.length) throw new Error(`Prompt ${template.id} has no place for ${unused.join(', ')}`);
  return text;
}
