import { createRequire } from 'node:module';

/**
 * Checks the element names a FHIRPath expression walks against the FHIR R4 definitions (the model
 * that ships with HL7's `fhirpath` package). FHIRPath itself answers a misspelt element with an empty
 * collection, so `%patient.birthdate` or `.performd` would quietly make a criterion false or a card
 * say "none recorded"; here they are refused at load, at their line and column, with the likely name.
 *
 * Types are followed only as far as they are certain (variables, members, filters such as where(),
 * first(), latest(), ofType()); after anything else (resolve(), arithmetic, most functions) the type is
 * unknown and nothing further is checked, so the check never refuses a valid expression.
 */
const require = createRequire(import.meta.url);
const model = require('fhirpath/fhir-context/r4') as {
  path2Type: Record<string, string>;
  choiceTypePaths: Record<string, string[]>;
  pathsDefinedElsewhere: Record<string, string>;
  type2Parent: Record<string, string>;
};

/** Possible types of a value: FHIR type names (`Period`) or element paths of backbone elements (`Encounter.participant`). */
export type FhirPathType = readonly string[] | undefined;

export class FhirPathPathError extends Error {
  readonly line: number | undefined;
  readonly column: number | undefined;
  constructor(message: string, line: number | undefined, column: number | undefined) {
    super(message);
    this.name = 'FhirPathPathError';
    this.line = line;
    this.column = column;
  }
}

type AstNode = {
  type: string;
  text?: string;
  start?: { line: number; column: number };
  children?: AstNode[];
};

let childNames: Map<string, Set<string>> | undefined;

/** Element names by the type or element path they belong to, built once from the model. */
function childrenOf(path: string): Set<string> {
  if (!childNames) {
    childNames = new Map();
    const keys = [
      ...Object.keys(model.path2Type),
      ...Object.keys(model.choiceTypePaths),
      ...Object.keys(model.pathsDefinedElsewhere),
    ];
    for (const key of keys) {
      const dot = key.lastIndexOf('.');
      if (dot < 0) continue;
      const parent = key.slice(0, dot);
      const names = childNames.get(parent) ?? new Set<string>();
      names.add(key.slice(dot + 1));
      childNames.set(parent, names);
    }
  }
  return childNames.get(path) ?? new Set();
}

/** The type itself, then what it specialises (`Patient` -> DomainResource -> Resource). */
function lineage(type: string): string[] {
  if (type.includes('.') && !type.startsWith('System.')) {
    const defined = model.path2Type[type];
    return [type, ...(defined ? lineage(defined) : ['BackboneElement', 'Element'])];
  }
  const chain = [type];
  let parent = model.type2Parent[type];
  while (parent && !chain.includes(parent)) {
    chain.push(parent);
    parent = model.type2Parent[parent];
  }
  return chain;
}

function isResourceType(type: string): boolean {
  return lineage(type).includes('Resource');
}

/** Type names as choice lists spell them (`DateTime`, `Quantity`) as the model's own names. */
function modelTypeName(name: string): string {
  if (childrenOf(name).size > 0 || model.type2Parent[name]) return name;
  const primitive = `${name[0].toLowerCase()}${name.slice(1)}`;
  return model.type2Parent[primitive] ? primitive : name;
}

/** The types of element `name` of a value of type `type`; null when no such element exists. */
function memberType(type: string, name: string): string[] | null {
  for (const owner of lineage(type)) {
    const key = `${owner}.${name}`;
    const defined = model.path2Type[key];
    if (defined !== undefined) {
      // Backbone elements are typed by their own path: their children are listed under it.
      return (defined === 'BackboneElement' || defined === 'Element') && childrenOf(key).size > 0
        ? [key]
        : [defined];
    }
    const choice = model.choiceTypePaths[key];
    if (choice) return choice.map(modelTypeName);
    const elsewhere = model.pathsDefinedElsewhere[key];
    if (elsewhere) return [elsewhere];
  }
  return null;
}

function knownChildren(type: string): string[] {
  return [...new Set(lineage(type).flatMap((owner) => [...childrenOf(owner)]))];
}

function editDistance(left: string, right: string): number {
  const previous = Array.from({ length: right.length + 1 }, (_, index) => index);
  for (let i = 1; i <= left.length; i++) {
    let diagonal = previous[0];
    previous[0] = i;
    for (let j = 1; j <= right.length; j++) {
      const above = previous[j];
      previous[j] = Math.min(
        previous[j] + 1,
        previous[j - 1] + 1,
        diagonal + (left[i - 1] === right[j - 1] ? 0 : 1),
      );
      diagonal = above;
    }
  }
  return previous[right.length];
}

function suggestion(types: readonly string[], name: string): string {
  const candidates = [...new Set(types.flatMap(knownChildren))];
  const lower = name.toLowerCase();
  const best = candidates
    .map((candidate) => ({
      candidate,
      distance: candidate.toLowerCase() === lower ? 0 : editDistance(candidate.toLowerCase(), lower),
    }))
    .filter(({ distance }) => distance <= Math.max(1, Math.floor(name.length / 3)))
    .sort((left, right) => left.distance - right.distance)[0];
  return best ? ` (did you mean ${best.candidate}?)` : '';
}

function describe(types: readonly string[]): string {
  return types.map((type) => (type.startsWith('System.') ? type.slice(7) : type)).join(' or ');
}

/** Functions whose result has the type of their input (filters, orderings, picks). */
const sameType = new Set([
  'where',
  'since',
  'withCode',
  'latest',
  'first',
  'last',
  'tail',
  'skip',
  'take',
  'distinct',
  'single',
  'intersect',
  'exclude',
  'trace',
  'sort',
]);

export interface PathCheckContext {
  /** Type of each `%variable` (environment variables and the rule's defines); unknown when absent. */
  variables: ReadonlyMap<string, FhirPathType>;
  /** The expression's root (`%context`): the Patient. */
  root: FhirPathType;
}

/** The expression's result type (when known), or a FhirPathPathError at the first unknown element. */
export function checkPaths(ast: unknown, context: PathCheckContext): FhirPathType {
  return typeOf(ast as AstNode, context.root, context);
}

function typeOf(node: AstNode, focus: FhirPathType, context: PathCheckContext): FhirPathType {
  const children = node.children ?? [];
  switch (node.type) {
    case 'EntireExpression':
    case 'TermExpression':
    case 'ParenthesizedTerm':
    case 'InvocationTerm':
      return children.length === 1 ? typeOf(children[0], focus, context) : walkAll(children, focus, context);
    case 'ExternalConstantTerm': {
      const name = children[0]?.children?.[0]?.text ?? node.text ?? '';
      return context.variables.get(name.replace(/^`|`$/g, ''));
    }
    case 'InvocationExpression': {
      const input = typeOf(children[0], focus, context);
      return invoke(children[1], input, context);
    }
    case 'MemberInvocation':
    case 'FunctionInvocation':
    case 'ThisInvocation':
      // An invocation at the start of an expression (or of a function's argument) applies to the focus.
      return invoke(node, focus, context);
    case 'IndexerExpression':
      walk(children[1], focus, context);
      return typeOf(children[0], focus, context);
    case 'UnionExpression': {
      const left = typeOf(children[0], focus, context);
      const right = typeOf(children[1], focus, context);
      return left && right ? [...new Set([...left, ...right])] : undefined;
    }
    case 'TypeExpression': {
      walk(children[0], focus, context);
      const typeName = children[1]?.text?.replace(/^FHIR\./, '');
      return node.text === 'as' && typeName ? [modelTypeName(typeName)] : undefined;
    }
    default:
      return walkAll(children, focus, context);
  }
}

/** Checks every sub-expression; the result's type is not known (a comparison, arithmetic, a literal). */
function walkAll(children: AstNode[], focus: FhirPathType, context: PathCheckContext): FhirPathType {
  for (const child of children) walk(child, focus, context);
  return undefined;
}

function walk(node: AstNode | undefined, focus: FhirPathType, context: PathCheckContext): void {
  if (node) typeOf(node, focus, context);
}

function invoke(node: AstNode | undefined, input: FhirPathType, context: PathCheckContext): FhirPathType {
  if (!node) return undefined;
  if (node.type === 'ThisInvocation') return input;
  if (node.type === 'MemberInvocation') return member(node, input);
  if (node.type !== 'FunctionInvocation') return undefined;
  const functn = node.children?.[0];
  const name = functn?.children?.[0]?.text ?? node.text ?? '';
  const parameters = functn?.children?.[1]?.children ?? [];
  // Their argument is a type name, not an expression.
  if (name === 'ofType' || name === 'as' || name === 'is') {
    const typeName = parameters[0] ? textOf(parameters[0]).replace(/^(FHIR|System)\./, '') : '';
    return name !== 'is' && typeName ? [modelTypeName(typeName)] : undefined;
  }
  // Arguments are evaluated per input item (where, select, exists, all...): the item is their focus.
  const argumentTypes = parameters.map((parameter) => typeOf(parameter, input, context));
  if (sameType.has(name)) return input;
  if (name === 'select' || name === 'repeat') return argumentTypes[0];
  if (name === 'extension') return ['Extension'];
  if (name === 'union' || name === 'combine')
    return input && argumentTypes[0] ? [...new Set([...input, ...argumentTypes[0]])] : undefined;
  if (name === 'iif')
    return argumentTypes[1] && argumentTypes[2]
      ? [...new Set([...argumentTypes[1], ...argumentTypes[2]])]
      : undefined;
  return undefined;
}

function textOf(node: AstNode): string {
  if (node.text && !node.children?.length) return node.text;
  return (node.children ?? []).map(textOf).join('');
}

function member(node: AstNode, input: FhirPathType): FhirPathType {
  const name = (node.children?.[0]?.text ?? node.text ?? '').replace(/^`|`$/g, '');
  if (!input) return undefined;
  // `Patient.birthDate`: a resource type name at the start filters the input by type.
  if (input.includes(name) && isResourceType(name)) return [name];
  const found = input.map((type) => memberType(type, name)).filter((types) => types !== null);
  if (found.length > 0) return [...new Set(found.flat())];
  throw new FhirPathPathError(
    `${describe(input)} has no element ${name}${suggestion(input, name)}`,
    node.start?.line,
    node.start?.column,
  );
}
