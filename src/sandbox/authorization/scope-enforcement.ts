import type { Bundle, BundleEntry, OperationOutcome, Resource } from 'fhir/r4.js';
import { outcome } from '../../../fhir/operation-outcome.ts';
import { type ClinicalScope, type Permission, parseClinicalScope } from '../../../fhir/smart-scopes.ts';
import {
  belongsToPatient,
  compartmentSearchParameter,
  isPatientCompartmentType,
} from './patient-compartment.ts';

/**
 * SMART v2 scopes applied to one FHIR request, as strict servers do: the resource type and the interaction
 * (c create, r read, u update, d delete, s search) must be covered by a granted scope, every entry of a batch or
 * transaction on its own; `patient/` scopes reach only the launch patient's compartment (searches are confined
 * to it, reads and writes outside it refused). A refusal is a 403 OperationOutcome naming the missing scope.
 */
export interface TokenAccess {
  clientId: string;
  scopes: readonly string[];
  /** The launch patient (id), for `patient/` scopes. */
  patient?: string;
  encounter?: string;
  fhirUser?: string;
  /** A client_credentials token: missing scopes are named `system/...`. */
  backend: boolean;
}

export interface ScopeEnforcementOptions {
  /**
   * Honour only the first scope per resource type, as Medplum does under an access policy that names resource
   * types (`system/DocumentReference.rs system/DocumentReference.cu` then only reads).
   */
  onlyFirstScopePerType: boolean;
  /**
   * Refuse a write of a resource declaring `meta.profile` unless the token may also read and search
   * StructureDefinition, as Medplum does: it looks the profile up with the caller's own access.
   */
  medplumProfileCheck?: boolean;
}

export interface EnforcedRequest {
  method: string;
  /** Path segments relative to the FHIR base (`['Patient', '123']`). */
  segments: string[];
  /** The search query; patient-confined searches get the compartment parameter added. */
  query: URLSearchParams;
  body: unknown;
  /** The absolute FHIR base; bundle entries may name it in their URLs. */
  baseUrl?: string;
}

export type EnforcementResult =
  | { allowed: true; query: URLSearchParams; body: unknown }
  | { allowed: false; status: number; outcome: OperationOutcome; headers: Record<string, string> };

type ReadStored = (type: string, id: string) => Promise<Resource | undefined>;

const verbs: Record<Permission, string> = { c: 'create', r: 'read', u: 'update', d: 'delete', s: 'search' };
const resourceTypePattern = /^[A-Z][A-Za-z]+$/;

/** What one request (or one bundle entry) does, as far as scopes are concerned. */
type Need =
  | { kind: 'search'; resourceType: string; permission: 's'; query: URLSearchParams }
  | { kind: 'instance'; resourceType: string; id: string; permission: Permission }
  | { kind: 'write'; resourceType: string; id: string | undefined; permission: 'c' | 'u'; body: unknown }
  /** Interactions that cannot be confined to one patient (type or system history, conditional delete). */
  | { kind: 'unconfined'; resourceType: string; permission: Permission };

async function needsFor(
  method: string,
  segments: string[],
  query: URLSearchParams,
  body: unknown,
  readStored: ReadStored,
): Promise<Need[]> {
  const [type, second, third] = segments;
  if (!type) {
    if (method !== 'GET') return [];
    // System-level search or history: every named type must be searchable; without _type, all of them.
    const types = query
      .getAll('_type')
      .flatMap((value) => value.split(','))
      .filter(Boolean);
    return (types.length > 0 ? types : ['*']).map((resourceType) => ({
      kind: 'unconfined',
      resourceType,
      permission: 's',
    }));
  }
  if (type === 'metadata' || type.startsWith('.well-known') || !resourceTypePattern.test(type)) return [];
  if (second === undefined) {
    if (method === 'GET') return [{ kind: 'search', resourceType: type, permission: 's', query }];
    if (method === 'POST')
      return [{ kind: 'write', resourceType: type, id: undefined, permission: 'c', body }];
    if (method === 'PUT' || method === 'PATCH')
      return [{ kind: 'write', resourceType: type, id: undefined, permission: 'u', body }];
    if (method === 'DELETE') return [{ kind: 'unconfined', resourceType: type, permission: 'd' }];
    return [];
  }
  if (second === '_search') return [{ kind: 'search', resourceType: type, permission: 's', query }];
  if (second === '_history') return [{ kind: 'unconfined', resourceType: type, permission: 's' }];
  if (second.startsWith('$')) return [{ kind: 'unconfined', resourceType: type, permission: 's' }];
  if (method === 'GET' || third?.startsWith('$'))
    return [{ kind: 'instance', resourceType: type, id: second, permission: 'r' }];
  if (method === 'DELETE') return [{ kind: 'instance', resourceType: type, id: second, permission: 'd' }];
  if (method === 'PATCH') return [{ kind: 'instance', resourceType: type, id: second, permission: 'u' }];
  if (method === 'PUT') {
    // Update-as-create is a create as far as scopes go.
    const exists = (await readStored(type, second)) !== undefined;
    return [{ kind: 'write', resourceType: type, id: second, permission: exists ? 'u' : 'c', body }];
  }
  return [];
}

function splitUrl(url: string): { segments: string[]; query: URLSearchParams } {
  const relative = url.replace(/^\/+/, '');
  const questionMark = relative.indexOf('?');
  const path = (questionMark < 0 ? relative : relative.slice(0, questionMark)).replace(/\/+$/, '');
  return {
    segments: path ? path.split('/') : [],
    query: new URLSearchParams(questionMark < 0 ? '' : relative.slice(questionMark + 1)),
  };
}

function isBatch(body: unknown): body is Bundle {
  const bundle = body as Bundle | undefined;
  return bundle?.resourceType === 'Bundle' && (bundle.type === 'batch' || bundle.type === 'transaction');
}

const placeholderPattern = /urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

/**
 * A transaction's entries reference each other by `urn:uuid:` fullUrl, and a server resolves those before it
 * checks access: a Provenance targeting the note created in the same transaction is about that note's
 * patient. Each placeholder is given a stand-in reference (`DocumentReference/transaction-entry-1`) that
 * reads as the entry's own resource.
 */
function transactionPlaceholders(bundle: Bundle): {
  resources: Map<string, Resource>;
  resolve: <T>(value: T) => T;
} {
  const aliases = new Map<string, string>();
  for (const [index, entry] of (bundle.entry ?? []).entries()) {
    const type = entry.resource?.resourceType;
    if (type && entry.fullUrl && /^urn:uuid:/i.test(entry.fullUrl))
      aliases.set(entry.fullUrl.toLowerCase(), `${type}/transaction-entry-${index}`);
  }
  const resolve = <T>(value: T): T =>
    value === undefined
      ? value
      : (JSON.parse(
          JSON.stringify(value).replace(
            placeholderPattern,
            (placeholder) => aliases.get(placeholder.toLowerCase()) ?? placeholder,
          ),
        ) as T);
  const resources = new Map<string, Resource>();
  for (const [index, entry] of (bundle.entry ?? []).entries()) {
    if (entry.resource && entry.fullUrl && aliases.has(entry.fullUrl.toLowerCase()))
      resources.set(`${entry.resource.resourceType}/transaction-entry-${index}`, {
        ...resolve(entry.resource),
        id: `transaction-entry-${index}`,
      });
  }
  return { resources, resolve };
}

/** The scopes that count: all of them, or (Medplum under an access policy) the first per resource type. */
export function effectiveScopes(
  scopes: readonly string[],
  options: ScopeEnforcementOptions,
): ClinicalScope[] {
  const parsed = scopes.map(parseClinicalScope).filter((scope): scope is ClinicalScope => Boolean(scope));
  if (!options.onlyFirstScopePerType) return parsed;
  const seen = new Set<string>();
  return parsed.filter((scope) => {
    if (seen.has(scope.resourceType)) return false;
    seen.add(scope.resourceType);
    return true;
  });
}

/**
 * Whether the scopes allow the interaction: anywhere (a `user/` or `system/` scope), only in the launch patient's
 * compartment (`patient/` scopes alone), or not at all. Scopes restricted by a query (`?category=...`) cover
 * nothing here: the sandbox does not evaluate them, and refusing is the safe reading.
 */
export function coverage(
  scopes: readonly ClinicalScope[],
  resourceType: string,
  permission: Permission,
): 'anywhere' | 'patient-compartment' | undefined {
  let patientOnly = false;
  for (const scope of scopes) {
    if (scope.resourceType !== '*' && scope.resourceType !== resourceType) continue;
    if (!scope.permissions.has(permission) || scope.query !== undefined) continue;
    if (scope.context !== 'patient') return 'anywhere';
    patientOnly = true;
  }
  return patientOnly ? 'patient-compartment' : undefined;
}

function refusal(diagnostics: string, missingScope?: string): EnforcementResult {
  return {
    allowed: false,
    status: 403,
    outcome: outcome('forbidden', diagnostics),
    headers: {
      'www-authenticate': `Bearer error="insufficient_scope"${missingScope ? `, scope="${missingScope}"` : ''}`,
    },
  };
}

export async function enforceScopes(
  access: TokenAccess,
  request: EnforcedRequest,
  readStored: ReadStored,
  options: ScopeEnforcementOptions,
): Promise<EnforcementResult> {
  const scopes = effectiveScopes(access.scopes, options);
  const contextName = access.backend ? 'system' : access.patient ? 'patient' : 'user';
  const firstOnlyNote = options.onlyFirstScopePerType
    ? ' (this server honours only the first scope per resource type)'
    : '';
  const patient = access.patient;
  const outsideCompartment = (what: string) =>
    refusal(`${what} is outside the compartment of Patient/${patient}, the only one patient/ scopes reach`);

  /**
   * The profile lookup a write of a profiled resource sets off on Medplum. It is the server's own lookup of
   * conformance resources, no patient's data, so a scope of any context covers it; the advice names `user/`
   * for clinicians' tokens because StructureDefinition is not patient data.
   */
  function checkProfileLookup(need: Need): EnforcementResult | undefined {
    if (!options.medplumProfileCheck || need.kind !== 'write') return undefined;
    const profiles = (need.body as Resource | undefined)?.meta?.profile ?? [];
    if (profiles.length === 0) return undefined;
    if (coverage(scopes, 'StructureDefinition', 'r') && coverage(scopes, 'StructureDefinition', 's'))
      return undefined;
    const missing = `${access.backend ? 'system' : 'user'}/StructureDefinition.rs`;
    return refusal(
      `insufficient scope: ${verbs[need.permission]} ${need.resourceType} declares meta.profile, which this server ` +
        `looks up as StructureDefinition with the caller's access: needs ${missing}${firstOnlyNote} ` +
        '(or write without meta.profile: fhir.declareProfiles false)',
      missing,
    );
  }

  /**
   * Checks one need; undefined when allowed. A patient-confined search gets its query narrowed in place.
   * `read` finds what the need refers to (a transaction's own entries first).
   */
  async function check(need: Need, read: ReadStored = readStored): Promise<EnforcementResult | undefined> {
    return (await checkScope(need, read)) ?? checkProfileLookup(need);
  }

  async function checkScope(need: Need, read: ReadStored): Promise<EnforcementResult | undefined> {
    const reach = coverage(scopes, need.resourceType, need.permission);
    if (!reach) {
      const missing = `${contextName}/${need.resourceType === '*' ? '*' : need.resourceType}.${need.permission}`;
      return refusal(
        `insufficient scope: ${verbs[need.permission]} ${need.resourceType} needs ${missing}${firstOnlyNote}`,
        missing,
      );
    }
    if (reach === 'anywhere') return undefined;
    if (!patient)
      return refusal('patient/ scopes need a patient in context (a launch), and this token has none');
    switch (need.kind) {
      case 'unconfined':
        return refusal(
          `${verbs[need.permission]} across ${need.resourceType} cannot be confined to one patient; patient/ scopes do not allow it`,
        );
      case 'search': {
        const parameter = compartmentSearchParameter(need.resourceType);
        if (parameter) need.query.append(parameter, parameter === '_id' ? patient : `Patient/${patient}`);
        return undefined;
      }
      case 'instance': {
        const stored = await read(need.resourceType, need.id);
        if (stored && !(await belongsToPatient(stored, patient, read)))
          return outsideCompartment(`${need.resourceType}/${need.id}`);
        return undefined;
      }
      case 'write': {
        if (need.id) {
          const stored = await read(need.resourceType, need.id);
          if (stored && !(await belongsToPatient(stored, patient, read)))
            return outsideCompartment(`${need.resourceType}/${need.id}`);
        }
        const body = need.body as Resource | undefined;
        if (
          body?.resourceType &&
          isPatientCompartmentType(body.resourceType) &&
          !(await belongsToPatient(body, patient, read))
        )
          return outsideCompartment(`the ${body.resourceType} written`);
        return undefined;
      }
    }
  }

  if (request.method === 'POST' && request.segments.length === 0 && isBatch(request.body)) {
    const bundle = structuredClone(request.body);
    const placeholders = bundle.type === 'transaction' ? transactionPlaceholders(bundle) : undefined;
    const read: ReadStored = placeholders
      ? async (type, id) => placeholders.resources.get(`${type}/${id}`) ?? readStored(type, id)
      : readStored;
    for (const [index, entry] of (bundle.entry ?? []).entries()) {
      const entryRequest = (entry as BundleEntry).request;
      if (!entryRequest?.url) continue;
      let url = entryRequest.url;
      if (/^[a-z][a-z0-9+.-]*:/i.test(url)) {
        // An absolute URL is checked like a relative one only when it names this server's base.
        if (!request.baseUrl || !url.startsWith(`${request.baseUrl}/`))
          return refusal(`entry ${index}: the URL names another server; use URLs relative to this FHIR base`);
        url = url.slice(request.baseUrl.length + 1);
      }
      const { segments, query } = splitUrl(url);
      const queryBefore = query.toString();
      // Checked as the server will store it, placeholders resolved; the Bundle sent on keeps them.
      const checkedResource = placeholders ? placeholders.resolve(entry.resource) : entry.resource;
      const needs = await needsFor(entryRequest.method, segments, query, checkedResource, read);
      for (const need of needs) {
        const refused = await check(need, read);
        if (refused && !refused.allowed) {
          const diagnostics = refused.outcome.issue[0]?.diagnostics ?? 'refused';
          refused.outcome.issue[0].diagnostics = `entry ${index} (${entryRequest.method} ${segments.join('/')}): ${diagnostics}`;
          return refused;
        }
      }
      const rewritten = query.toString();
      if (rewritten !== queryBefore) entryRequest.url = `${segments.join('/')}?${rewritten}`;
    }
    return { allowed: true, query: request.query, body: bundle };
  }

  for (const need of await needsFor(
    request.method,
    request.segments,
    request.query,
    request.body,
    readStored,
  )) {
    const refused = await check(need);
    if (refused) return refused;
  }
  return { allowed: true, query: request.query, body: request.body };
}
