import { createHash } from 'node:crypto';
import { existsSync } from 'node:fs';
import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import type { ZodError } from 'zod';
import { additionalHistoryTypes, historyResourceTypes } from '../../fhir/patient-record.ts';
import type { CqlCompiler, ElmLibrary } from './cql-compiler.ts';
import {
  elmRetrieves,
  includedLibraryName,
  libraryClosure,
  libraryDataRequirements,
} from './cql-data-requirements.ts';
import type { CqlRuntime } from './cql-runtime.ts';
import {
  type CompiledFhirPath,
  compileFhirPath,
  environmentVariables,
  FhirPathCompileError,
} from './fhirpath-compiler.ts';
import type { FhirPathType } from './fhirpath-paths.ts';
import { type RuleDocument, ruleDocumentSchema } from './rule-schema.ts';
import type { CompiledCriterion, CompiledRule, RuleLoadError, RuleSetLoadResult } from './rule-set.ts';
import { builtInTemplateValues, templateNames } from './template.ts';
import {
  emptyValueSetIndex,
  ValueSetIndex,
  valueSetFileFromCodeServiceJson,
  valueSetFileFromFhir,
  valueSetFileSchema,
} from './value-sets.ts';
import { contentLine, positionOf } from './yaml-location.ts';

/**
 * Reads a rules folder into a RuleSet, or into the full list of what is wrong with it (file, line,
 * reason). Every rule file is checked even after the first error, so one `rules validate` run shows
 * a team everything to fix.
 */
export interface RuleSetSource {
  directory: string;
  valueSetFile?: string;
  cqlModelDirectory?: string;
  defaultSuppressionDays: number;
  perEncounterCap: number;
}

/** Rule files live at the top of the folder; CQL libraries in `cql/`; fixtures anywhere below. */
export const cqlSubdirectory = 'cql';

export async function loadRuleSet(source: RuleSetSource): Promise<RuleSetLoadResult> {
  const errors: RuleLoadError[] = [];
  const fingerprint = createHash('sha256');
  if (!existsSync(source.directory)) {
    return {
      ok: false,
      errors: [{ file: display(source.directory), line: undefined, message: 'rules folder not found' }],
    };
  }

  const valueSets = await loadValueSets(source.valueSetFile, errors, fingerprint);
  const uncompiledLibraries = new Set<string>();
  const elmLibraries = await loadCqlLibraries(source, valueSets, errors, fingerprint, uncompiledLibraries);

  let cql: CqlRuntime | undefined;
  if (elmLibraries.size > 0 && errors.length === 0) {
    try {
      // The CQL engine is loaded only for rule sets that use CQL: FHIRPath-only sets do not carry it.
      const { CqlRuntime } = await import('./cql-runtime.ts');
      cql = new CqlRuntime(elmLibraries, valueSets);
    } catch (error) {
      errors.push({
        file: display(path.join(source.directory, cqlSubdirectory)),
        line: undefined,
        message: `CQL libraries do not load: ${messageOf(error)}`,
      });
    }
  }

  const ruleFiles = (await readdir(source.directory)).filter((name) => /\.ya?ml$/.test(name)).sort();
  const rules: CompiledRule[] = [];
  const firstFileById = new Map<string, string>();
  for (const name of ruleFiles) {
    const file = path.join(source.directory, name);
    const text = await readFile(file, 'utf8');
    fingerprint.update(name).update('\0').update(text).update('\0');
    const rule = compileRuleFile(
      file,
      name,
      text,
      { valueSets, elmLibraries, uncompiledLibraries, source, cql },
      errors,
    );
    if (!rule) continue;
    const earlier = firstFileById.get(rule.document.id);
    if (earlier) {
      errors.push({
        file: display(file),
        line: 1,
        message: `rule id ${rule.document.id} is already used by ${earlier}`,
      });
      continue;
    }
    firstFileById.set(rule.document.id, name);
    rules.push(rule);
  }
  if (ruleFiles.length === 0) {
    errors.push({
      file: display(source.directory),
      line: undefined,
      message: 'no rule files (*.yaml) in the rules folder',
    });
  }

  if (errors.length > 0) return { ok: false, errors };
  return {
    ok: true,
    ruleSet: {
      directory: source.directory,
      rules,
      additionalResourceTypes: additionalResourceTypes(rules),
      valueSets,
      cql,
      fingerprint: fingerprint.digest('hex').slice(0, 16),
      loadedAt: new Date(),
      perEncounterCap: source.perEncounterCap,
    },
  };
}

/**
 * Hash of the content of every file a rule set is built from (rule files, CQL libraries, value sets),
 * read by path: the watcher compares it to decide whether anything changed, whatever the editor did
 * to the file (in-place write, replace by rename, symlink swap).
 */
export async function ruleSourceDigest(source: RuleSetSource): Promise<string> {
  const digest = createHash('sha256');
  const readInto = async (file: string, name: string) => {
    try {
      digest
        .update(name)
        .update('\0')
        .update(await readFile(file))
        .update('\0');
    } catch {
      // Gone between listing and reading, or unreadable: the listing change alone is a change.
      digest.update(name).update('\0missing\0');
    }
  };
  const list = async (directory: string) => {
    try {
      return (await readdir(directory)).sort();
    } catch {
      return undefined;
    }
  };
  const top = await list(source.directory);
  digest.update(top === undefined ? 'no-folder\0' : 'folder\0');
  for (const name of (top ?? []).filter((entry) => /\.ya?ml$/.test(entry)))
    await readInto(path.join(source.directory, name), name);
  const cqlDirectory = path.join(source.directory, cqlSubdirectory);
  for (const name of (await list(cqlDirectory)) ?? [])
    await readInto(path.join(cqlDirectory, name), `${cqlSubdirectory}/${name}`);
  if (source.valueSetFile) await readInto(source.valueSetFile, 'value-sets');
  return digest.digest('hex');
}

async function loadValueSets(
  file: string | undefined,
  errors: RuleLoadError[],
  fingerprint: ReturnType<typeof createHash>,
): Promise<ValueSetIndex> {
  if (!file || !existsSync(file)) return emptyValueSetIndex;
  const text = await readFile(file, 'utf8');
  fingerprint.update(text);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    errors.push({
      file: display(file),
      line: jsonErrorLine(text, error),
      message: `not valid JSON: ${messageOf(error)}`,
    });
    return emptyValueSetIndex;
  }
  const resourceType = (json as { resourceType?: unknown })?.resourceType;
  const converted =
    resourceType === 'Bundle' || resourceType === 'ValueSet'
      ? valueSetFileFromFhir(json)
      : (json as { valueSets?: unknown })?.valueSets === undefined
        ? valueSetFileFromCodeServiceJson(json)
        : undefined;
  if (converted) {
    for (const message of converted.errors) errors.push({ file: display(file), line: undefined, message });
    if (!converted.file) return emptyValueSetIndex;
    json = converted.file;
  }
  const parsed = valueSetFileSchema.safeParse(json);
  if (!parsed.success) {
    for (const issue of parsed.error.issues) {
      errors.push({
        file: display(file),
        line: undefined,
        message: `${issue.path.join('.') || '(root)'}: ${issue.message}`,
      });
    }
    return emptyValueSetIndex;
  }
  return new ValueSetIndex(parsed.data);
}

/** Types the history loads for every patient anyway; the rest of what rules read is loaded on request. */
const standardResourceTypes = new Set<string>(['Patient', ...historyResourceTypes]);
const loadableResourceTypes = new Set<string>([...standardResourceTypes, ...additionalHistoryTypes]);

/** What the enabled rules read beyond the standard history: the retrieval, prefetch and backtests load these too. */
function additionalResourceTypes(rules: CompiledRule[]): string[] {
  const types = new Set<string>();
  for (const rule of rules) {
    if (!rule.document.enabled) continue;
    for (const type of rule.dataRequirements) if (!standardResourceTypes.has(type)) types.add(type);
  }
  return [...types].sort();
}

/** A library that reads a type the service cannot load for a patient would see none: refused, at the retrieve. */
function checkRetrievableTypes(
  libraries: Map<string, ElmLibrary>,
  files: Map<string, string>,
  directory: string,
  errors: RuleLoadError[],
): void {
  for (const [name, elm] of libraries) {
    const reported = new Set<string>();
    for (const retrieve of elmRetrieves(elm)) {
      if (loadableResourceTypes.has(retrieve.resourceType) || reported.has(retrieve.resourceType)) continue;
      reported.add(retrieve.resourceType);
      errors.push({
        file: display(files.get(name) ?? directory),
        line: retrieve.line,
        column: retrieve.column,
        message: `CQL library ${name} reads ${retrieve.resourceType}, which the service cannot load for a patient (it loads ${[...loadableResourceTypes].sort().join(', ')})`,
      });
    }
  }
}

function locatorPosition(locator: string | undefined): { line: number | undefined; column?: number } {
  const match = /^(\d+):(\d+)/.exec(locator ?? '');
  return match ? { line: Number(match[1]), column: Number(match[2]) } : { line: undefined };
}

const wrongModelAdvice = ', but patient data here is FHIR R4 (4.0.1): use the R4 edition of the library';

/** FHIR versions whose data the engine's R4 model reads correctly. */
const runnableFhirVersions = new Set(['4.0.0', '4.0.1']);

/**
 * Libraries written for another data model than the patient data (FHIR DSTU2 1.0.2, STU3 3.0.0, QDM)
 * would run against R4 resources and quietly find nothing: refused at the `using` line. Returns the
 * libraries that may run, for the checks that follow.
 */
function checkFhirVersions(
  libraries: Map<string, ElmLibrary>,
  files: Map<string, string>,
  directory: string,
  errors: RuleLoadError[],
): Map<string, ElmLibrary> {
  const runnable = new Map<string, ElmLibrary>();
  for (const [name, elm] of libraries) {
    const models = (elm.library.usings?.def ?? []).filter((using) => using.localIdentifier !== 'System');
    const wrong = models.find(
      (using) => using.localIdentifier !== 'FHIR' || !runnableFhirVersions.has(using.version ?? ''),
    );
    if (!wrong) {
      runnable.set(name, elm);
      continue;
    }
    errors.push({
      file: display(files.get(name) ?? directory),
      ...locatorPosition(wrong.locator),
      message:
        `CQL library ${name} uses ${wrong.localIdentifier} ${wrong.version ?? ''}`.trimEnd() +
        wrongModelAdvice,
    });
  }
  return runnable;
}

async function loadCqlLibraries(
  source: RuleSetSource,
  valueSets: ValueSetIndex,
  errors: RuleLoadError[],
  fingerprint: ReturnType<typeof createHash>,
  uncompiledLibraries: Set<string>,
): Promise<Map<string, ElmLibrary>> {
  const libraries = new Map<string, ElmLibrary>();
  /** Library name -> the file it came from, for errors found after compiling. */
  const files = new Map<string, string>();
  const directory = path.join(source.directory, cqlSubdirectory);
  if (!existsSync(directory)) return libraries;
  const names = (await readdir(directory)).sort();
  let compiler: CqlCompiler | undefined;
  for (const name of names) {
    const file = path.join(directory, name);
    if (name.endsWith('.json')) {
      const text = await readFile(file, 'utf8');
      fingerprint.update(name).update(text);
      const elm = elmFromJson(text, file, errors);
      if (elm) {
        libraries.set(elm.library.identifier.id, elm);
        files.set(elm.library.identifier.id, file);
        checkElmValueSets(elm, file, undefined, valueSets, errors);
      }
    } else if (name.endsWith('.cql')) {
      const text = await readFile(file, 'utf8');
      fingerprint.update(name).update(text);
      const declared = /^\s*library\s+"?([A-Za-z0-9_.]+)"?/m.exec(text)?.[1] ?? path.basename(name, '.cql');
      // Until it compiles, errors are reported here and rules naming it are not told it is "missing".
      uncompiledLibraries.add(declared);
      // Said before compiling: the translator's own complaint about a second FHIR version is obscure.
      const model = /^\s*using\s+"?(\w+)"?(?:\s+version\s+'([^']*)')?/m.exec(text);
      if (model && (model[1] !== 'FHIR' || !runnableFhirVersions.has(model[2] ?? ''))) {
        errors.push({
          file: display(file),
          line: lineContaining(text, model[0].trim()),
          message: `CQL library uses ${model[1]} ${model[2] ?? ''}`.trimEnd() + wrongModelAdvice,
        });
        continue;
      }
      if (!source.cqlModelDirectory) {
        errors.push({
          file: display(file),
          line: 1,
          message:
            'CQL source needs rules.cqlModelDirectory (model info and FHIRHelpers) to compile; or ship ELM JSON',
        });
        continue;
      }
      try {
        // The CQL-to-ELM translator is large: loaded only when a site ships CQL source.
        compiler ??= (await import('./cql-compiler.ts')).createCqlCompiler(source.cqlModelDirectory, [
          directory,
        ]);
      } catch (error) {
        errors.push({ file: display(file), line: undefined, message: messageOf(error) });
        continue;
      }
      const result = compiler.compile(text);
      const compileErrors = result.errors.filter((message) => message.severity === 'error');
      for (const message of compileErrors) {
        errors.push({
          file: display(file),
          line: message.line,
          column: message.column,
          message: `CQL: ${message.message}`,
        });
      }
      if (compileErrors.length > 0) continue;
      uncompiledLibraries.delete(declared);
      for (const [libraryName, elm] of result.libraries) {
        if (!libraries.has(libraryName)) libraries.set(libraryName, elm);
      }
      const own = result.name ? result.libraries.get(result.name) : undefined;
      if (own && result.name) {
        files.set(result.name, file);
        checkElmValueSets(own, file, text, valueSets, errors);
      }
    }
  }
  for (const [name, elm] of libraries) {
    for (const include of elm.library.includes?.def ?? []) {
      const where = {
        file: display(files.get(name) ?? directory),
        ...locatorPosition((include as { locator?: string }).locator),
      };
      const included = includedLibraryName(include, libraries);
      if (!included) {
        errors.push({
          ...where,
          message: `CQL library ${name} includes ${include.path}, which is not in the folder (as ELM JSON or CQL source)`,
        });
        continue;
      }
      const version = libraries.get(included)?.library.identifier.version;
      // The engine resolves an include only at its exact version: a mismatch would fail at run time.
      if (include.version && version !== include.version) {
        errors.push({
          ...where,
          message: `CQL library ${name} includes ${include.path} version ${include.version}, but the folder has version ${version ?? '(none)'}`,
        });
      }
    }
  }
  const runnable = checkFhirVersions(libraries, files, directory, errors);
  checkRetrievableTypes(runnable, files, directory, errors);
  return libraries;
}

function elmFromJson(text: string, file: string, errors: RuleLoadError[]): ElmLibrary | undefined {
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (error) {
    errors.push({
      file: display(file),
      line: jsonErrorLine(text, error),
      message: `not valid JSON: ${messageOf(error)}`,
    });
    return undefined;
  }
  // CDS Connect and eCQM artifacts also ship ELM inside a FHIR Library resource.
  const resource = json as { resourceType?: string; content?: { contentType?: string; data?: string }[] };
  if (resource.resourceType === 'Library') {
    const attachment = resource.content?.find((content) => content.contentType === 'application/elm+json');
    if (!attachment?.data) {
      errors.push({
        file: display(file),
        line: undefined,
        message: 'FHIR Library has no application/elm+json content',
      });
      return undefined;
    }
    return elmFromJson(Buffer.from(attachment.data, 'base64').toString('utf8'), file, errors);
  }
  const elm = json as ElmLibrary;
  if (!elm?.library?.identifier?.id) {
    errors.push({
      file: display(file),
      line: undefined,
      message: 'not an ELM JSON library (no library.identifier.id)',
    });
    return undefined;
  }
  const translatorErrors = (elm.library.annotation ?? []).filter(
    (annotation) =>
      (annotation as { type?: string; errorSeverity?: string }).type === 'CqlToElmError' &&
      (annotation as { errorSeverity?: string }).errorSeverity === 'error',
  );
  if (translatorErrors.length > 0) {
    errors.push({
      file: display(file),
      line: undefined,
      message: `ELM was translated with ${translatorErrors.length} error(s)`,
    });
    return undefined;
  }
  return elm;
}

function checkElmValueSets(
  elm: ElmLibrary,
  file: string,
  sourceText: string | undefined,
  valueSets: ValueSetIndex,
  errors: RuleLoadError[],
): void {
  for (const valueSet of elm.library.valueSets?.def ?? []) {
    if (valueSets.has(valueSet.id)) continue;
    const line = sourceText ? lineContaining(sourceText, valueSet.id) : undefined;
    errors.push({
      file: display(file),
      line,
      message: `unknown value set ${valueSet.id} (not in the value-set file)`,
    });
  }
}

interface CompileContext {
  valueSets: ValueSetIndex;
  elmLibraries: Map<string, ElmLibrary>;
  /** Names of libraries whose CQL source did not compile (their errors are already reported). */
  uncompiledLibraries: ReadonlySet<string>;
  source: RuleSetSource;
  cql: CqlRuntime | undefined;
}

function compileRuleFile(
  file: string,
  name: string,
  text: string,
  context: CompileContext,
  errors: RuleLoadError[],
): CompiledRule | undefined {
  const shownFile = display(file);
  const lineCounter = new LineCounter();
  const document = parseDocument(text, { lineCounter, prettyErrors: false, uniqueKeys: true });
  if (document.errors.length > 0) {
    for (const error of document.errors) {
      const position = lineCounter.linePos(error.pos[0]);
      errors.push({
        file: shownFile,
        line: position.line,
        column: position.col,
        message: `YAML: ${error.message.split('\n')[0]}`,
      });
    }
    return undefined;
  }
  const parsed = ruleDocumentSchema.safeParse(document.toJS());
  if (!parsed.success) {
    errors.push(...schemaErrors(parsed.error, shownFile, document, lineCounter));
    return undefined;
  }
  const rule = parsed.data;
  const before = errors.length;
  const fileLines = text.split('\n');
  const at = (
    location: readonly PropertyKey[],
    message: string,
    inner?: { line?: number; column?: number },
  ) => {
    const content = contentLine(document, lineCounter, location);
    const position = positionOf(document, lineCounter, location);
    const line = content && inner?.line ? content.line + inner.line - 1 : (content?.line ?? position?.line);
    // A block scalar's lines are indented in the file: the expression's column is past that indentation.
    const blockIndent =
      content?.block && content.line ? (/^ */.exec(fileLines[content.line - 1] ?? '')?.[0].length ?? 0) : 0;
    errors.push({
      file: shownFile,
      line,
      column:
        inner?.line === 1 && !content?.block
          ? undefined
          : inner?.column === undefined
            ? undefined
            : inner.column + blockIndent,
      message,
    });
  };

  const defines = new Map<string, CompiledFhirPath>();
  const defineNames = Object.keys(rule.define);
  // A define's type (Procedure, Observation...) is what `%name` has in later expressions: their paths are checked too.
  const defineTypes = new Map<string, FhirPathType>();
  defineNames.forEach((defineName, index) => {
    const reserved = (environmentVariables as readonly string[]).includes(defineName);
    if (reserved) {
      at(['define', defineName], `define ${defineName}: the name is a built-in variable`);
      return;
    }
    const compiled = compileOrReport(
      rule.define[defineName],
      context,
      defineNames.slice(0, index),
      (message, inner) => at(['define', defineName], `define ${defineName}: ${message}`, inner),
      defineTypes,
    );
    if (compiled) {
      defines.set(defineName, compiled);
      defineTypes.set(defineName, compiled.resultType);
    }
  });

  const criteria: CompiledCriterion[] = [];
  rule.condition.criteria.forEach((criterion, index) => {
    if (criterion.fhirpath !== undefined) {
      const location = ['condition', 'criteria', index, 'fhirpath'];
      const compiled = compileOrReport(
        criterion.fhirpath,
        context,
        defineNames,
        (message, inner) => at(location, `criterion ${criterion.id}: ${message}`, inner),
        defineTypes,
      );
      if (compiled)
        criteria.push({
          id: criterion.id,
          description: criterion.description,
          kind: 'fhirpath',
          fhirpath: compiled,
        });
    } else {
      const reference = criterion.cql;
      if (!reference) return;
      // A library whose source did not compile was reported at its own line; "not found" would mislead.
      if (context.uncompiledLibraries.has(reference.library)) return;
      const library = context.elmLibraries.get(reference.library);
      if (!library) {
        at(
          ['condition', 'criteria', index, 'cql', 'library'],
          `criterion ${criterion.id}: CQL library ${reference.library} is not in ${cqlSubdirectory}/`,
        );
        return;
      }
      const defines = (library.library.statements?.def ?? []).map((statement) => statement.name);
      if (!defines.includes(reference.expression)) {
        at(
          ['condition', 'criteria', index, 'cql', 'expression'],
          `criterion ${criterion.id}: CQL library ${reference.library} has no define "${reference.expression}"`,
        );
        return;
      }
      const parameters = reference.parameters ?? {};
      const problems = context.cql?.parameterProblems(reference.library, parameters) ?? [];
      for (const problem of problems)
        at(['condition', 'criteria', index, 'cql', 'parameters'], `criterion ${criterion.id}: ${problem}`);
      if (problems.length > 0) return;
      criteria.push({
        id: criterion.id,
        description: criterion.description,
        kind: 'cql',
        library: reference.library,
        expression: reference.expression,
        parameters,
      });
    }
  });
  const duplicateCriterion = rule.condition.criteria
    .map((criterion) => criterion.id)
    .find((id, index, ids) => ids.indexOf(id) !== index);
  if (duplicateCriterion) at(['condition', 'criteria'], `criterion id ${duplicateCriterion} is used twice`);

  const dataRequirements = new Set<string>();
  for (const criterion of criteria) {
    if (criterion.kind !== 'cql') continue;
    for (const type of libraryDataRequirements(criterion.library, context.elmLibraries))
      dataRequirements.add(type);
  }
  // FHIRPath reads the pre-visit answers through %questionnaireResponses: loaded with the record on request.
  const fhirPathTexts = [
    ...Object.values(rule.define),
    ...rule.condition.criteria.map((criterion) => criterion.fhirpath ?? ''),
    ...Object.values(rule.values),
  ];
  if (fhirPathTexts.some((text) => /%questionnaireResponses\b/.test(text)))
    dataRequirements.add('QuestionnaireResponse');

  const values = new Map<string, CompiledFhirPath>();
  for (const [valueName, expression] of Object.entries(rule.values)) {
    const compiled = compileOrReport(
      expression,
      context,
      defineNames,
      (message, inner) => at(['values', valueName], `value ${valueName}: ${message}`, inner),
      defineTypes,
    );
    if (compiled) values.set(valueName, compiled);
  }
  const known = new Set<string>([...builtInTemplateValues, ...Object.keys(rule.values)]);
  const templates: [PropertyKey[], string | undefined][] = [
    [['suggestedAction'], rule.suggestedAction],
    [['summary'], rule.summary],
    [['urgency', 'reason'], rule.urgency?.reason],
  ];
  for (const [location, template] of templates) {
    for (const placeholder of templateNames(template ?? '')) {
      if (!known.has(placeholder))
        at(
          location,
          `template uses {{${placeholder}}}, which is not a declared value (values: ${[...known].join(', ')})`,
        );
    }
  }
  rule.suggestions.forEach((suggestion, index) => {
    const problem = suggestionProblem(suggestion.resource);
    if (problem) at(['suggestions', index, 'resource'], `suggestion ${index + 1}: ${problem}`);
    for (const placeholder of templateNames(
      [suggestion.label, ...stringsIn(suggestion.resource)].join('\n'),
    )) {
      if (!known.has(placeholder))
        at(
          ['suggestions', index],
          `suggestion ${index + 1} uses {{${placeholder}}}, which is not a declared value (values: ${[...known].join(', ')})`,
        );
    }
  });
  rule.tests.forEach((test, index) => {
    if (!existsSync(path.resolve(path.dirname(file), test.fixture)))
      at(['tests', index, 'fixture'], `fixture ${test.fixture} not found`);
    for (const problem of overrideProblems(test.parameters ?? {}, criteria, context.cql))
      at(['tests', index, 'parameters'], problem);
  });
  if (errors.length > before) return undefined;
  return {
    document: rule,
    file: name,
    criteria,
    values,
    defines,
    dataRequirements: [...dataRequirements].sort(),
    logicFingerprint: logicFingerprint(rule, criteria, defines, context),
    versionLine: positionOf(document, lineCounter, ['version'])?.line,
    suppressionDays: rule.suppression?.days ?? context.source.defaultSuppressionDays,
  };
}

/**
 * Parameter values given over a whole rule (a test's, a backtest's): each must be a parameter of at
 * least one library the rule's criteria use, and fit its type there.
 */
export function overrideProblems(
  values: Record<string, unknown>,
  criteria: CompiledCriterion[],
  cql: CqlRuntime | undefined,
): string[] {
  const libraries = [
    ...new Set(criteria.flatMap((criterion) => (criterion.kind === 'cql' ? [criterion.library] : []))),
  ];
  const problems: string[] = [];
  for (const [name, value] of Object.entries(values)) {
    const declaring = libraries.filter((library) => cql?.declaresParameter(library, name));
    if (declaring.length === 0) {
      problems.push(
        `parameter "${name}" is not a parameter of ${libraries.length > 0 ? `CQL library ${libraries.join(' or ')}` : 'any CQL library (the rule has no CQL criteria)'}`,
      );
      continue;
    }
    for (const library of declaring)
      problems.push(...(cql?.parameterProblems(library, { [name]: value }) ?? []));
  }
  return [...new Set(problems)];
}

/** What a proposed resource must say for the EHR to create something a clinician can act on. */
function suggestionProblem(resource: Record<string, unknown> & { resourceType: string }): string | undefined {
  const has = (...fields: string[]) => fields.some((field) => resource[field] !== undefined);
  switch (resource.resourceType) {
    case 'ServiceRequest':
      return has('code') ? undefined : 'a ServiceRequest needs a code (what to order)';
    case 'MedicationRequest':
      return has('medicationCodeableConcept', 'medicationReference')
        ? undefined
        : 'a MedicationRequest needs medicationCodeableConcept (or medicationReference)';
    case 'ImmunizationRecommendation':
      return Array.isArray(resource.recommendation) && resource.recommendation.length > 0
        ? undefined
        : 'an ImmunizationRecommendation needs at least one recommendation';
    case 'CommunicationRequest':
      return has('payload') ? undefined : 'a CommunicationRequest needs a payload';
    default:
      return has('code', 'description') ? undefined : 'a Task needs a code or a description';
  }
}

function stringsIn(value: unknown): string[] {
  if (typeof value === 'string') return [value];
  if (Array.isArray(value)) return value.flatMap(stringsIn);
  if (value && typeof value === 'object') return Object.values(value).flatMap(stringsIn);
  return [];
}

function logicFingerprint(
  rule: RuleDocument,
  criteria: CompiledCriterion[],
  defines: Map<string, CompiledFhirPath>,
  context: CompileContext,
): string {
  const hash = createHash('sha256');
  hash.update(
    JSON.stringify({
      trigger: [...rule.trigger].sort(),
      match: rule.condition.match,
      define: rule.define,
      criteria: rule.condition.criteria.map(({ id, fhirpath, cql }) => ({ id, fhirpath, cql })),
    }),
  );
  const valueSetUrls = new Set<string>();
  for (const compiled of defines.values()) for (const url of compiled.valueSetUrls) valueSetUrls.add(url);
  const libraries = new Set<string>();
  for (const criterion of criteria) {
    if (criterion.kind === 'fhirpath')
      for (const url of criterion.fhirpath.valueSetUrls) valueSetUrls.add(url);
    else for (const name of libraryClosure(criterion.library, context.elmLibraries)) libraries.add(name);
  }
  for (const name of [...libraries].sort()) {
    const elm = context.elmLibraries.get(name);
    if (!elm) continue;
    hash.update(`\0library ${name}\0`).update(JSON.stringify(withoutSourceDetail(elm.library)));
    for (const valueSet of elm.library.valueSets?.def ?? []) valueSetUrls.add(valueSet.id);
  }
  for (const url of [...valueSetUrls].sort())
    hash.update(`\0valueset ${url}\0`).update(context.valueSets.membersOf(url).join('\n'));
  return hash.digest('hex').slice(0, 16);
}

/** ELM without what only reflects the source's layout (annotations, positions, node ids). */
function withoutSourceDetail(value: unknown): unknown {
  if (Array.isArray(value)) return value.map(withoutSourceDetail);
  if (!value || typeof value !== 'object') return value;
  return Object.fromEntries(
    Object.entries(value as Record<string, unknown>)
      .filter(([key]) => key !== 'annotation' && key !== 'locator' && key !== 'localId')
      .map(([key, inner]) => [key, withoutSourceDetail(inner)]),
  );
}

function compileOrReport(
  expression: string,
  context: CompileContext,
  defineNames: readonly string[],
  report: (message: string, inner?: { line?: number; column?: number }) => void,
  defineTypes: ReadonlyMap<string, FhirPathType> = new Map(),
): CompiledFhirPath | undefined {
  try {
    return compileFhirPath(expression, context.valueSets, defineNames, defineTypes);
  } catch (error) {
    if (error instanceof FhirPathCompileError)
      report(error.message, { line: error.line, column: error.column });
    else report(messageOf(error));
    return undefined;
  }
}

function schemaErrors(
  error: ZodError,
  file: string,
  document: ReturnType<typeof parseDocument>,
  lineCounter: LineCounter,
): RuleLoadError[] {
  return error.issues.flatMap((issue) => {
    const where = issue.path.length > 0 ? issue.path.join('.') : '(rule)';
    if (issue.code === 'unrecognized_keys') {
      return issue.keys.map((key) => {
        const position = positionOf(document, lineCounter, issue.path, key);
        return {
          file,
          line: position?.line,
          column: position?.column,
          message: `unknown field ${key} in ${where}`,
        };
      });
    }
    const position = positionOf(document, lineCounter, issue.path);
    return [{ file, line: position?.line, column: position?.column, message: `${where}: ${issue.message}` }];
  });
}

function jsonErrorLine(text: string, error: unknown): number | undefined {
  const position = /position (\d+)/.exec(messageOf(error));
  if (!position)
    return /line (\d+)/.exec(messageOf(error)) ? Number(/line (\d+)/.exec(messageOf(error))?.[1]) : undefined;
  return text.slice(0, Number(position[1])).split('\n').length;
}

function lineContaining(text: string, needle: string): number | undefined {
  const index = text.indexOf(needle);
  return index < 0 ? undefined : text.slice(0, index).split('\n').length;
}

function display(file: string): string {
  const relative = path.relative(process.cwd(), file);
  return relative.startsWith('..') || path.isAbsolute(relative) ? file : relative;
}

function messageOf(error: unknown): string {
  return (error instanceof Error ? error.message : String(error)).split('\n')[0];
}

export type { RuleDocument };
