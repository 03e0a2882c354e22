import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import path from 'node:path';
import {
  CqlTranslator,
  createLibrarySourceProvider,
  createModelInfoProvider,
  createUcumService,
  LibraryManager,
  ModelManager,
  stringAsSource,
} from '@cqframework/cql/cql-to-elm';

/**
 * CQL source -> ELM JSON with the reference translator (@cqframework/cql), for sites that write CQL
 * rather than ship ELM. The site's model folder holds system-modelinfo.xml and FHIRHelpers; the FHIR
 * R4 model info ships inside cql-exec-fhir and is used when the folder has none.
 */
export interface CqlCompileMessage {
  line: number | undefined;
  column: number | undefined;
  message: string;
  severity: 'error' | 'warning';
}

export interface CqlCompileResult {
  /** ELM JSON of the compiled library, and of every library it includes, by library name. */
  libraries: Map<string, ElmLibrary>;
  name: string | undefined;
  errors: CqlCompileMessage[];
}

export type ElmLibrary = {
  library: {
    identifier: { id: string; version?: string; system?: string };
    usings?: { def?: { localIdentifier: string; uri?: string; version?: string; locator?: string }[] };
    valueSets?: { def?: { name: string; id: string; version?: string }[] };
    statements?: { def?: { name: string; context?: string }[] };
    includes?: { def?: { path: string; version?: string; localIdentifier?: string }[] };
    parameters?: { def?: { name: string; default?: unknown; parameterTypeSpecifier?: unknown }[] };
    annotation?: unknown[];
  };
};

const require = createRequire(import.meta.url);

export interface CqlCompiler {
  compile(source: string): CqlCompileResult;
}

const kotlinBanner = 'kotlin-logging: initializing';

/**
 * The translator (Kotlin compiled to JS) announces its logger on standard output the first time it
 * logs. A CLI's output is for its reader (and scripts parse it): that one line is dropped, anything
 * else written meanwhile passes.
 */
function withoutKotlinBanner<T>(work: () => T): T {
  const log = console.log;
  const write = process.stdout.write;
  console.log = (...values: unknown[]) => {
    if (typeof values[0] === 'string' && values[0].startsWith(kotlinBanner)) return;
    log.apply(console, values);
  };
  // Kotlin's println writes the line, then its newline on its own.
  let bannerDropped = false;
  process.stdout.write = ((chunk: unknown, ...rest: unknown[]) => {
    if (String(chunk).startsWith(kotlinBanner)) {
      bannerDropped = true;
      return true;
    }
    if (bannerDropped && String(chunk) === '\n') {
      bannerDropped = false;
      return true;
    }
    bannerDropped = false;
    return (write as (...arguments_: unknown[]) => boolean).apply(process.stdout, [chunk, ...rest]);
  }) as typeof process.stdout.write;
  try {
    return work();
  } finally {
    console.log = log;
    process.stdout.write = write;
  }
}

/** `sourceDirectories` are searched for included libraries (`Name-1.0.0.cql` or `Name.cql`). */
export function createCqlCompiler(modelDirectory: string, sourceDirectories: string[] = []): CqlCompiler {
  return withoutKotlinBanner(() => translatorFor(modelDirectory, sourceDirectories));
}

function translatorFor(modelDirectory: string, sourceDirectories: string[]): CqlCompiler {
  if (!existsSync(path.join(modelDirectory, 'system-modelinfo.xml'))) {
    throw new Error(`CQL model folder ${modelDirectory} has no system-modelinfo.xml`);
  }
  const modelManager = new ModelManager();
  modelManager.modelInfoLoader.registerModelInfoProvider(
    createModelInfoProvider((name, _system, version) => {
      const text = readModelInfo(modelDirectory, name, version ?? undefined);
      return text === undefined ? null : stringAsSource(text);
    }),
  );
  const libraryManager = new LibraryManager(modelManager, undefined, undefined, ucumService());
  const directories = [modelDirectory, ...sourceDirectories];
  libraryManager.librarySourceLoader.registerProvider(
    createLibrarySourceProvider((name, _system, version) => {
      const text = findLibrarySource(directories, name, version ?? undefined);
      return text === undefined ? null : stringAsSource(text);
    }),
  );
  return {
    compile: (source) => withoutKotlinBanner(() => compileWith(libraryManager, source)),
  };
}

function compileWith(libraryManager: LibraryManager, source: string): CqlCompileResult {
  const translator = CqlTranslator.fromText(source, libraryManager);
  const elm = JSON.parse(translator.toJson()) as ElmLibrary;
  const errors = compileMessages(elm);
  const libraries = new Map<string, ElmLibrary>();
  const name = elm.library?.identifier?.id;
  if (errors.every((message) => message.severity !== 'error')) {
    for (const library of translatedLibraries(translator)) {
      libraries.set(library.library.identifier.id, library);
    }
    if (name) libraries.set(name, elm);
  }
  return { libraries, name, errors };
}

function readModelInfo(directory: string, name: string, version: string | undefined): string | undefined {
  const fileName =
    name === 'System' ? 'system-modelinfo.xml' : `${name.toLowerCase()}-modelinfo-${version}.xml`;
  const local = path.join(directory, fileName);
  if (existsSync(local)) return readFileSync(local, 'utf8');
  if (name === 'FHIR' && version) {
    const shipped = path.join(path.dirname(require.resolve('cql-exec-fhir')), 'modelInfos', fileName);
    if (existsSync(shipped)) return readFileSync(shipped, 'utf8');
  }
  return undefined;
}

function findLibrarySource(
  directories: string[],
  name: string,
  version: string | undefined,
): string | undefined {
  for (const directory of directories) {
    const candidates = [version ? `${name}-${version}.cql` : undefined, `${name}.cql`].filter(
      (candidate): candidate is string => candidate !== undefined,
    );
    for (const candidate of candidates) {
      const file = path.join(directory, candidate);
      if (existsSync(file)) return readFileSync(file, 'utf8');
    }
    // A library whose file is named differently still resolves by its `library` declaration.
    if (!existsSync(directory)) continue;
    for (const file of readdirSync(directory).filter((entry) => entry.endsWith('.cql'))) {
      const text = readFileSync(path.join(directory, file), 'utf8');
      if (new RegExp(`^\\s*library\\s+"?${name}"?(\\s|$)`, 'm').test(text)) return text;
    }
  }
  return undefined;
}

type TranslatorWithLibraries = {
  libraries: { asJsReadonlyMapView(): ReadonlyMap<unknown, unknown> };
};

function translatedLibraries(translator: CqlTranslator): ElmLibrary[] {
  const view = (translator as unknown as TranslatorWithLibraries).libraries.asJsReadonlyMapView();
  const libraries: ElmLibrary[] = [];
  for (const library of view.values()) {
    if (!library) continue;
    libraries.push(JSON.parse(CqlTranslator.convertToJson(library as never)) as ElmLibrary);
  }
  return libraries;
}

function compileMessages(elm: ElmLibrary): CqlCompileMessage[] {
  const annotations = (elm.library?.annotation ?? []) as {
    type?: string;
    startLine?: number;
    startChar?: number;
    message?: string;
    errorSeverity?: string;
  }[];
  return annotations
    .filter((annotation) => annotation.type === 'CqlToElmError')
    .map((annotation) => ({
      line: annotation.startLine,
      column: annotation.startChar,
      message: annotation.message ?? 'CQL error',
      severity: annotation.errorSeverity === 'warning' ? 'warning' : 'error',
    }));
}

type UcumUtils = {
  convertUnitTo(from: string, value: number, to: string): { status: string; toVal?: number; msg?: string[] };
  validateUnitString(unit: string): { status: string; msg?: string[] };
};

function ucumService() {
  const ucum = (
    require('@lhncbc/ucum-lhc') as { UcumLhcUtils: { getInstance(): UcumUtils } }
  ).UcumLhcUtils.getInstance();
  return createUcumService(
    (value, from, to) => {
      const converted = ucum.convertUnitTo(from, Number(value), to);
      if (converted.status !== 'succeeded' || converted.toVal === undefined) {
        throw new Error(`cannot convert ${from} to ${to}`);
      }
      return String(converted.toVal);
    },
    (unit) => {
      const validation = ucum.validateUnitString(unit);
      return validation.status === 'valid' ? null : (validation.msg?.join('; ') ?? `invalid unit ${unit}`);
    },
    () => {
      throw new Error('UCUM multiplication is not supported at compile time');
    },
    () => {
      throw new Error('UCUM division is not supported at compile time');
    },
  );
}
