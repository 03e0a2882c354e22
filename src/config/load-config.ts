import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { isMap, isScalar, LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { configSchema, type ServiceConfig } from './config-schema.ts';

/**
 * Configuration comes from an optional YAML file and from environment variables, environment winning.
 * Environment names: `EHR_AGENT_` + the key path in UPPER_SNAKE, sections joined by `__`
 * (`EHR_AGENT_QUEUE__ADAPTER=postgres`). A few well-known names are accepted as they are
 * (PORT, FHIR_BASE_URL, NOTIFY_SECRET, ADMIN_SECRET, DATA_DIR, LOG_LEVEL, PUBLIC_URL, DATABASE_URL).
 */
export class ConfigError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ConfigError';
  }
}

const envPrefix = 'EHR_AGENT_';
const aliases: Record<string, string[]> = {
  PORT: ['port'],
  HOST: ['host'],
  PUBLIC_URL: ['publicUrl'],
  DATA_DIR: ['dataDir'],
  LOG_LEVEL: ['logLevel'],
  FHIR_BASE_URL: ['fhir', 'baseUrl'],
  NOTIFY_SECRET: ['notify', 'secret'],
  ADMIN_SECRET: ['admin', 'secret'],
  DATABASE_URL: ['queue', 'postgresUrl'],
};

const toCamel = (snake: string) =>
  snake.toLowerCase().replace(/_([a-z0-9])/g, (_, letter: string) => letter.toUpperCase());

type Tree = Record<string, unknown>;

function setPath(tree: Tree, keys: string[], value: unknown): void {
  let node = tree;
  for (const key of keys.slice(0, -1)) {
    if (typeof node[key] !== 'object' || node[key] === null) node[key] = {};
    node = node[key] as Tree;
  }
  node[keys[keys.length - 1]] = value;
}

type JsonSchemaNode = {
  type?: string | string[];
  properties?: Record<string, JsonSchemaNode>;
  additionalProperties?: JsonSchemaNode | boolean;
  anyOf?: JsonSchemaNode[];
  oneOf?: JsonSchemaNode[];
  allOf?: JsonSchemaNode[];
};

let configJsonSchema: JsonSchemaNode | undefined;

/** The JSON types the schema accepts at a key path, so environment strings can become numbers, booleans or lists. */
function expectedTypesAt(keys: string[]): Set<string> {
  configJsonSchema ??= z.toJSONSchema(configSchema, {
    io: 'input',
    unrepresentable: 'any',
  }) as JsonSchemaNode;
  let nodes: JsonSchemaNode[] = [configJsonSchema];
  const expand = (node: JsonSchemaNode): JsonSchemaNode[] => [
    node,
    ...[...(node.anyOf ?? []), ...(node.oneOf ?? []), ...(node.allOf ?? [])].flatMap(expand),
  ];
  for (const key of keys) {
    nodes = nodes.flatMap(expand).flatMap((node) => {
      const child =
        node.properties?.[key] ??
        (typeof node.additionalProperties === 'object' ? node.additionalProperties : undefined);
      return child ? [child] : [];
    });
  }
  const types = new Set<string>();
  for (const node of nodes.flatMap(expand)) for (const type of [node.type ?? []].flat()) types.add(type);
  return types;
}

function parseEnvValue(raw: string, keys: string[]): unknown {
  const trimmed = raw.trim();
  // Maps and lists (triggers, scopes) may be given as JSON.
  if (trimmed.startsWith('{') || trimmed.startsWith('[')) {
    try {
      return JSON.parse(trimmed);
    } catch {
      return raw;
    }
  }
  const types = expectedTypesAt(keys);
  if (types.has('string')) return raw;
  if ((types.has('number') || types.has('integer')) && trimmed !== '' && Number.isFinite(Number(trimmed)))
    return Number(trimmed);
  if (types.has('boolean') && (trimmed === 'true' || trimmed === 'false')) return trimmed === 'true';
  if (types.has('array')) return trimmed.split(/[\s,]+/).filter(Boolean);
  return raw;
}

function environmentTree(env: NodeJS.ProcessEnv): { tree: Tree; sources: Map<string, string> } {
  const tree: Tree = {};
  const sources = new Map<string, string>();
  for (const [name, value] of Object.entries(env)) {
    if (value === undefined || value === '') continue;
    let keys: string[] | undefined;
    if (name.startsWith(envPrefix) && name !== `${envPrefix}CONFIG`) {
      keys = name.slice(envPrefix.length).split('__').map(toCamel);
    } else if (aliases[name]) {
      keys = aliases[name];
    }
    if (!keys) continue;
    setPath(tree, keys, parseEnvValue(value, keys));
    sources.set(keys.join('.'), `environment variable ${name}`);
  }
  return { tree, sources };
}

function deepMerge(base: Tree, override: Tree): Tree {
  const merged: Tree = { ...base };
  for (const [key, value] of Object.entries(override)) {
    const existing = merged[key];
    merged[key] =
      typeof value === 'object' &&
      value !== null &&
      !Array.isArray(value) &&
      typeof existing === 'object' &&
      existing
        ? deepMerge(existing as Tree, value as Tree)
        : value;
  }
  return merged;
}

interface YamlSource {
  tree: Tree;
  lineOf(keys: (string | number)[]): number | undefined;
}

function readYaml(file: string): YamlSource {
  const lineCounter = new LineCounter();
  const document = parseDocument(readFileSync(file, 'utf8'), { lineCounter, prettyErrors: true });
  if (document.errors.length > 0) {
    const first = document.errors[0];
    const line = first.linePos?.[0]?.line;
    throw new ConfigError(`${file}${line ? `:${line}` : ''}: ${first.message.split('\n')[0]}`);
  }
  const tree = (document.toJS() ?? {}) as Tree;
  if (typeof tree !== 'object' || Array.isArray(tree))
    throw new ConfigError(`${file}:1: expected a mapping of keys`);
  return {
    tree,
    lineOf(keys) {
      // Walk to the deepest node that exists and report its line: an unknown key still points at its parent.
      let node: unknown = document.contents;
      let line: number | undefined;
      for (const key of keys) {
        if (!isMap(node)) break;
        const pair = node.items.find((item) => isScalar(item.key) && item.key.value === key);
        if (!pair) break;
        const offset = (pair.key as { range?: [number, number, number] }).range?.[0];
        if (offset !== undefined) line = lineCounter.linePos(offset).line;
        node = pair.value;
      }
      return line;
    },
  };
}

function describeIssue(issue: z.core.$ZodIssue, where: (keys: (string | number)[]) => string): string {
  const keys = issue.path.filter((key): key is string | number => typeof key !== 'symbol');
  const unknown = issue.code === 'unrecognized_keys' ? issue.keys : [];
  if (unknown.length > 0) {
    return unknown
      .map((key) => `${where([...keys, key])}: unknown key "${[...keys, key].join('.')}"`)
      .join('\n');
  }
  return `${where(keys)}: "${keys.join('.') || '(root)'}" ${issue.message}`;
}

/** Reads, merges and validates the configuration; throws ConfigError naming every bad key and where it came from. */
export function loadConfig(
  options: { env?: NodeJS.ProcessEnv; file?: string; cwd?: string } = {},
): ServiceConfig {
  const env = options.env ?? process.env;
  const cwd = options.cwd ?? process.cwd();
  const explicitFile = options.file ?? env[`${envPrefix}CONFIG`];
  const file = explicitFile ? path.resolve(cwd, explicitFile) : path.resolve(cwd, 'config/service.yaml');
  if (explicitFile && !existsSync(file)) throw new ConfigError(`configuration file not found: ${file}`);
  const yaml = existsSync(file) ? readYaml(file) : undefined;
  const environment = environmentTree(env);
  const merged = deepMerge(yaml?.tree ?? {}, environment.tree);
  const result = configSchema.safeParse(merged);
  if (result.success) return result.data;
  const where = (keys: (string | number)[]) => {
    const fromEnvironment = environment.sources.get(keys.join('.'));
    if (fromEnvironment) return fromEnvironment;
    const line = yaml?.lineOf(keys);
    return yaml ? `${file}${line ? `:${line}` : ''}` : 'configuration';
  };
  throw new ConfigError(
    `invalid configuration:\n${result.error.issues.map((issue) => describeIssue(issue, where)).join('\n')}`,
  );
}
