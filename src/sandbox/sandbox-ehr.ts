import { getStatus } from '@medplum/core';
import { FhirRouter, type HttpMethod } from '@medplum/fhir-router';
import type { OperationOutcome as MedplumOutcome, Resource as MedplumResource } from '@medplum/fhirtypes';
import type {
  Binary,
  Bundle,
  BundleLink,
  FhirResource,
  OperationOutcome,
  Parameters,
  Resource,
} from 'fhir/r4.js';
import { normalizeOperationOutcome, outcome } from '../../fhir/operation-outcome.ts';
import { type Logger, silentLogger } from '../log.ts';
import type { SandboxAuthorizationServer } from './authorization/authorization-server.ts';
import { enforceScopes, type TokenAccess } from './authorization/scope-enforcement.ts';
import { sandboxCapabilityStatement } from './capability-statement.ts';
import { loadFhirDefinitionsOnce } from './fhir-definitions.ts';
import { ObservedRepository } from './observed-repository.ts';
import {
  type DeliveryRecord,
  SandboxSubscriptions,
  type SubscriptionOptions,
} from './sandbox-subscriptions.ts';

/**
 * The embedded sandbox EHR: a real FHIR R4 REST API (Medplum's router over an in-memory repository)
 * behind a framework-free `handle(request)`, plus what real servers add around it: status codes,
 * Location/ETag/Last-Modified, absolute paging links, 410 for deleted resources, raw Binary reads,
 * a CapabilityStatement, bare `patient=<id>` searches, and Backport IG subscriptions.
 * Only the composition root and tests use it; the service talks to it over HTTP like to any EHR.
 */
export interface SandboxRequest {
  method: string;
  /** Path and query relative to the FHIR base, e.g. `Patient/123` or `/Encounter?patient=Patient/1`. */
  url: string;
  headers?: Record<string, string | string[] | undefined>;
  body?: unknown;
  /** The absolute FHIR base this request arrived on; used for links and Location headers. */
  baseUrl?: string;
  /**
   * The caller's address as the HTTP layer saw it. Absent for in-process callers (the composition root, tests),
   * which are trusted like loopback.
   */
  remoteAddress?: string;
}

export interface SandboxResponse {
  status: number;
  headers: Record<string, string>;
  /** A FHIR resource (JSON), or raw bytes for a Binary read that did not ask for FHIR JSON. */
  body?: Resource | Uint8Array;
}

export type SandboxRouteHandler = (request: SandboxRequest) => Promise<SandboxResponse> | SandboxResponse;

export interface SandboxEhrOptions {
  /** Absolute FHIR base (e.g. http://localhost:8080/sandbox/fhir); the HTTP router fills it in when absent. */
  baseUrl?: string;
  /** Page size when a search names no `_count` (real servers page; clients must follow `next`). */
  defaultPageSize?: number;
  maxPageSize?: number;
  subscriptions?: SubscriptionOptions;
  logger?: Logger;
  auth?: SandboxAuthOptions;
}

export interface SandboxAuthOptions {
  /** Refuse requests without a token even from loopback (by default loopback callers act as the EHR's administrator). */
  required?: boolean;
  /** Honour only the first scope per resource type, as Medplum does under an access policy. */
  onlyFirstScopePerType?: boolean;
  /** Refuse writes declaring meta.profile without StructureDefinition.rs, as Medplum does (default true). */
  medplumProfileCheck?: boolean;
}

export interface SandboxEhr {
  readonly repository: ObservedRepository;
  readonly baseUrl: string | undefined;
  setBaseUrl(baseUrl: string): void;
  handle(request: SandboxRequest): Promise<SandboxResponse>;
  /** Stores resources as given (ids kept, no subscription events). */
  seed(resources: readonly FhirResource[]): Promise<void>;
  /** Extra routes answered before FHIR routing, e.g. `GET .well-known/smart-configuration`. */
  addRoute(method: string, path: string, handler: SandboxRouteHandler): void;
  /** Resolves when every queued subscription notification has been delivered or given up. */
  whenIdle(): Promise<void>;
  heartbeat(subscriptionId: string): Promise<void>;
  /** The SMART authorization server whose tokens this EHR accepts; requests carrying a token are checked against it. */
  readonly authorization: SandboxAuthorizationServer | undefined;
  attachAuthorization(server: SandboxAuthorizationServer): void;
  /** Lets subscriptions notify one more endpoint, matched exactly (none is allowed by default). */
  allowSubscriptionEndpoint(endpoint: string): void;
  readonly deliveries: readonly DeliveryRecord[];
  close(): Promise<void>;
}

const fhirJson = 'application/fhir+json; charset=utf-8';
const resourceTypePattern = /^[A-Z][A-Za-z]+$/;

function header(headers: SandboxRequest['headers'], name: string): string | undefined {
  if (!headers) return undefined;
  const value = headers[name] ?? Object.entries(headers).find(([key]) => key.toLowerCase() === name)?.[1];
  return Array.isArray(value) ? value[0] : value;
}

function lowerCaseHeaders(headers: SandboxRequest['headers']): Record<string, string> {
  const result: Record<string, string> = {};
  for (const [key, value] of Object.entries(headers ?? {})) {
    if (value !== undefined) result[key.toLowerCase()] = Array.isArray(value) ? value.join(', ') : value;
  }
  return result;
}

/** Medplum reads only `W/"<version>"`; clients also send `"<version>"` or the bare version. */
function routerHeaders(headers: SandboxRequest['headers']): Record<string, string> {
  const result = lowerCaseHeaders(headers);
  const ifMatch = result['if-match'];
  if (ifMatch && !/^W\//.test(ifMatch)) result['if-match'] = `W/"${ifMatch.replace(/"/g, '')}"`;
  return result;
}

function errorResponse(
  status: number,
  body: OperationOutcome,
  headers: Record<string, string> = {},
): SandboxResponse {
  return { status, headers: { 'content-type': fhirJson, ...headers }, body };
}

function isLoopbackAddress(address: string): boolean {
  const plain = address.replace(/^::ffff:/i, '');
  return plain === '::1' || /^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(plain);
}

/** Paths anyone may read without a token: how to find the server's capabilities and its authorization server. */
const openPaths = new Set(['metadata', '.well-known/smart-configuration']);

function isResource(value: unknown): value is Resource {
  return typeof value === 'object' && value !== null && typeof (value as Resource).resourceType === 'string';
}

export function createSandboxEhr(options: SandboxEhrOptions = {}): SandboxEhr {
  loadFhirDefinitionsOnce();
  const logger = options.logger ?? silentLogger();
  const repository = new ObservedRepository();
  const router = new FhirRouter();
  const defaultPageSize = options.defaultPageSize ?? 50;
  const maxPageSize = options.maxPageSize ?? 1000;
  let baseUrl = options.baseUrl?.replace(/\/$/, '');
  const subscriptions = new SandboxSubscriptions(repository, () => baseUrl, {
    logger,
    ...options.subscriptions,
  });
  const extraRoutes = new Map<string, SandboxRouteHandler>();
  /**
   * Writes run one at a time, as serializable database transactions would appear to. Medplum's router
   * resolves a transaction's conditional creates before it writes them, and the in-memory repository
   * isolates nothing: two interleaved transactions for the same draft could each reference a resource
   * the other one ended up creating, and a rollback could undo another caller's write.
   */
  let lastWrite: Promise<unknown> = Promise.resolve();
  function oneWriteAtATime<T>(work: () => Promise<T>): Promise<T> {
    const next = lastWrite.then(work, work);
    lastWrite = next.catch(() => undefined);
    return next;
  }
  function isReadOnly(method: string, body: unknown): boolean {
    if (method === 'GET' || method === 'HEAD') return true;
    const bundle = body as Bundle | undefined;
    return (
      method === 'POST' &&
      bundle?.resourceType === 'Bundle' &&
      bundle.type === 'batch' &&
      (bundle.entry ?? []).every((entry) => entry.request?.method === 'GET')
    );
  }
  let authorization: SandboxAuthorizationServer | undefined;
  const authOptions = {
    required: false,
    onlyFirstScopePerType: false,
    medplumProfileCheck: true,
    ...options.auth,
  };

  /**
   * Who is calling: a token's grant, the administrator (no token, from loopback or in process, unless tokens
   * are required), or a refusal (401 with WWW-Authenticate, as RFC 6750 describes).
   */
  async function identifyCaller(
    request: SandboxRequest,
  ): Promise<{ access: TokenAccess | 'administrator' } | { refused: SandboxResponse }> {
    const authorizationHeader = header(request.headers, 'authorization');
    const unauthorized = (diagnostics: string, error?: string) => ({
      refused: errorResponse(401, outcome('login', diagnostics), {
        'www-authenticate': `Bearer realm="sandbox"${error ? `, error="${error}"` : ''}`,
      }),
    });
    if (authorizationHeader === undefined) {
      if (authOptions.required)
        return unauthorized('this sandbox requires a bearer token (sandbox.auth.required)');
      if (request.remoteAddress && !isLoopbackAddress(request.remoteAddress))
        return unauthorized('a bearer token is required from outside this machine');
      return { access: 'administrator' };
    }
    const bearer = /^Bearer +([\x21-\x7e]+)$/i.exec(authorizationHeader);
    if (!bearer) return unauthorized('the Authorization header must be "Bearer <token>"', 'invalid_request');
    const access = await authorization?.verifyAccessToken(bearer[1]);
    if (!access)
      return unauthorized('the bearer token is unknown, expired or for another server', 'invalid_token');
    return { access };
  }

  async function readStored(type: string, id: string): Promise<Resource | undefined> {
    if (!resourceTypePattern.test(type)) return undefined;
    return repository.readResource(type, id).then(
      (resource) => resource as unknown as Resource,
      () => undefined,
    );
  }

  function absolute(base: string | undefined, relative: string): string {
    return base ? `${base}/${relative}` : relative;
  }

  function searchLinks(bundle: Bundle, path: string, query: URLSearchParams, base: string | undefined): void {
    const count = Number(query.get('_count'));
    const offset = Number(query.get('_offset') ?? 0) || 0;
    const link = (relation: string, pageOffset: number): BundleLink => {
      const pageQuery = new URLSearchParams(query);
      pageQuery.set('_offset', String(pageOffset));
      return { relation, url: absolute(base, `${path}?${pageQuery.toString()}`) };
    };
    const links: BundleLink[] = [{ relation: 'self', url: absolute(base, `${path}?${query.toString()}`) }];
    if (Number.isFinite(count) && count > 0) {
      links.push(link('first', 0));
      if (offset > 0) links.push(link('previous', Math.max(0, offset - count)));
      if (bundle.total !== undefined && offset + count < bundle.total)
        links.push(link('next', offset + count));
    }
    bundle.link = links;
  }

  function addFullUrls(bundle: Bundle, base: string | undefined): void {
    for (const entry of bundle.entry ?? []) {
      if (entry.resource?.id && !entry.fullUrl)
        entry.fullUrl = absolute(base, `${entry.resource.resourceType}/${entry.resource.id}`);
    }
  }

  /** Backport `$status` / `$events`: parameters from the query or a Parameters body. */
  async function subscriptionOperation(
    operation: '$status' | '$events',
    id: string | undefined,
    query: URLSearchParams,
    body: unknown,
  ): Promise<SandboxResponse> {
    const fromBody = (name: string) =>
      ((body as Parameters | undefined)?.parameter ?? [])
        .filter((parameter) => parameter.name === name)
        .map((parameter) =>
          String(
            parameter.valueString ??
              parameter.valueId ??
              parameter.valueInteger ??
              parameter.valueUnsignedInt ??
              '',
          ),
        );
    const values = (name: string) =>
      [...query.getAll(name), ...fromBody(name)].flatMap((value) => value.split(','));
    const toNumber = (name: string) => {
      const value = Number(values(name)[0]);
      return Number.isFinite(value) && values(name).length > 0 ? value : undefined;
    };
    try {
      if (operation === '$status') {
        const ids = id ? [id] : values('id').filter(Boolean);
        return {
          status: 200,
          headers: { 'content-type': fhirJson },
          body: await subscriptions.statusBundle(ids),
        };
      }
      if (!id)
        return errorResponse(
          400,
          outcome('invalid', '$events is an instance operation: Subscription/[id]/$events'),
        );
      return {
        status: 200,
        headers: { 'content-type': fhirJson },
        body: await subscriptions.eventsBundle(
          id,
          toNumber('eventsSinceNumber'),
          toNumber('eventsUntilNumber'),
        ),
      };
    } catch (error) {
      const normalized = normalizeOperationOutcome(error);
      return errorResponse(normalized.status, normalized.outcome);
    }
  }

  async function handle(request: SandboxRequest): Promise<SandboxResponse> {
    const method = request.method.toUpperCase() as HttpMethod;
    const base = request.baseUrl?.replace(/\/$/, '') ?? baseUrl;
    const relative = request.url.replace(/^\/+/, '');
    const questionMark = relative.indexOf('?');
    const path = (questionMark < 0 ? relative : relative.slice(0, questionMark)).replace(/\/+$/, '');
    const query = new URLSearchParams(questionMark < 0 ? '' : relative.slice(questionMark + 1));
    const segments = path ? path.split('/') : [];

    const extra = extraRoutes.get(`${method} ${path}`);
    if (extra) return extra({ ...request, baseUrl: base });
    if (method === 'GET' && path === 'metadata') {
      return {
        status: 200,
        headers: { 'content-type': fhirJson },
        body: sandboxCapabilityStatement(
          base,
          'ehr-draft-agent sandbox EHR',
          authorization && { authorize: authorization.authorizeUrl, token: authorization.tokenUrl },
        ),
      };
    }
    if (method === 'GET' && path === '.well-known/smart-configuration') {
      if (!authorization)
        return errorResponse(404, outcome('not-found', 'this sandbox has no authorization server attached'));
      return {
        status: 200,
        headers: { 'content-type': 'application/json', 'cache-control': 'no-store' },
        body: authorization.smartConfiguration() as unknown as Resource,
      };
    }

    let requestBody = request.body;
    if (!openPaths.has(path)) {
      const caller = await identifyCaller(request);
      if ('refused' in caller) return caller.refused;
      if (caller.access !== 'administrator') {
        const enforced = await enforceScopes(
          caller.access,
          { method, segments, query, body: requestBody, baseUrl: base },
          readStored,
          {
            onlyFirstScopePerType: authOptions.onlyFirstScopePerType,
            medplumProfileCheck: authOptions.medplumProfileCheck,
          },
        );
        if (!enforced.allowed) return errorResponse(enforced.status, enforced.outcome, enforced.headers);
        requestBody = enforced.body;
      }
    }

    if (segments[0] === 'Subscription' && (method === 'GET' || method === 'POST')) {
      const operation = segments.at(-1);
      if (operation === '$status' || operation === '$events') {
        return subscriptionOperation(
          operation,
          segments.length === 3 ? segments[1] : undefined,
          query,
          requestBody,
        );
      }
    }

    const isTypeSearch = segments.length === 1 && resourceTypePattern.test(segments[0]) && method === 'GET';
    if (isTypeSearch) {
      // Real clients send `patient=<id>`; Medplum's memory search only matches `Patient/<id>`.
      for (const name of ['patient', 'subject:Patient']) {
        const values = query.getAll(name);
        if (values.length === 0) continue;
        query.delete(name);
        for (const value of values)
          query.append(
            name,
            value
              .split(',')
              .map((item) => (item.includes('/') ? item : `Patient/${item}`))
              .join(','),
          );
      }
      const requested = Number(query.get('_count'));
      const pageSize =
        Number.isFinite(requested) && requested > 0 ? Math.min(requested, maxPageSize) : defaultPageSize;
      query.set('_count', String(pageSize));
    }

    if ((method === 'POST' || method === 'PUT') && segments.length >= 1 && segments.length <= 2 && path) {
      if (!isResource(requestBody))
        return errorResponse(
          400,
          outcome('structure', 'the body must be a FHIR resource (JSON object with resourceType)'),
        );
      if (resourceTypePattern.test(segments[0]) && requestBody.resourceType !== segments[0])
        return errorResponse(
          400,
          outcome('invalid', `resourceType ${requestBody.resourceType} does not match ${segments[0]}`),
        );
      if (method === 'PUT' && segments[1] && requestBody.id !== segments[1])
        return errorResponse(400, outcome('invalid', 'the resource id must match the id in the URL'));
    }
    if (method === 'POST' && !path && (!isResource(requestBody) || requestBody.resourceType !== 'Bundle'))
      return errorResponse(
        400,
        outcome('structure', 'a POST to the base must carry a batch or transaction Bundle'),
      );

    const existedBefore =
      method === 'PUT' && segments.length === 2
        ? await repository.readResource(segments[0], segments[1]).then(
            () => true,
            () => false,
          )
        : true;
    const queryString = query.toString();
    const url = queryString ? `${path}?${queryString}` : path;
    const queryRecord: Record<string, string | string[]> = {};
    for (const key of new Set(query.keys())) {
      const values = query.getAll(key);
      queryRecord[key] = values.length === 1 ? values[0] : values;
    }

    let result: Awaited<ReturnType<FhirRouter['handleRequest']>>;
    try {
      const routed = () =>
        router.handleRequest(
          {
            method,
            url,
            pathname: '',
            params: {},
            query: queryRecord,
            body: requestBody,
            headers: routerHeaders(request.headers),
            // Without this Medplum's router runs a transaction Bundle as a batch: entry by entry, no rollback.
            config: { transactions: true },
          },
          repository,
        );
      result = await (isReadOnly(method, requestBody) ? routed() : oneWriteAtATime(routed));
    } catch (error) {
      const normalized = normalizeOperationOutcome(error);
      return errorResponse(normalized.status, normalized.outcome);
    }
    const [resultOutcome, resource] = result as [MedplumOutcome, MedplumResource | undefined];
    let status = getStatus(resultOutcome);

    if (
      status === 404 &&
      method === 'GET' &&
      segments.length >= 2 &&
      repository.isDeleted(segments[0], segments[1])
    ) {
      return errorResponse(410, outcome('deleted', `${segments[0]}/${segments[1]} has been deleted`));
    }
    if (!resource || status >= 400) {
      return errorResponse(status, resultOutcome as unknown as OperationOutcome);
    }

    const body = resource as unknown as Resource;
    const headers: Record<string, string> = { 'content-type': fhirJson };
    if (body.resourceType === 'Bundle') {
      const bundle = body as Bundle;
      addFullUrls(bundle, base);
      if (bundle.type === 'searchset') searchLinks(bundle, path, query, base);
      // Searches inside a batch page like standalone ones: each result carries its own next link.
      if (bundle.type === 'batch-response') {
        const requests = isResource(requestBody) ? ((requestBody as Bundle).entry ?? []) : [];
        bundle.entry?.forEach((entry, index) => {
          const inner = entry.resource as Bundle | undefined;
          const requestUrl = requests[index]?.request?.url;
          if (inner?.resourceType !== 'Bundle' || inner.type !== 'searchset' || !requestUrl) return;
          const [innerPath, innerQuery = ''] = requestUrl.replace(/^\/+/, '').split('?');
          addFullUrls(inner, base);
          searchLinks(inner, innerPath, new URLSearchParams(innerQuery), base);
        });
      }
      // `_summary=count`: the total only (Medplum's memory search ignores it).
      if (bundle.type === 'searchset' && query.get('_summary') === 'count') {
        bundle.entry = undefined;
        bundle.link = bundle.link?.filter((link) => link.relation === 'self');
      }
    } else if (body.id && method !== 'DELETE') {
      const versionId = body.meta?.versionId;
      if (versionId) headers.etag = `W/"${versionId}"`;
      if (body.meta?.lastUpdated) headers['last-modified'] = new Date(body.meta.lastUpdated).toUTCString();
      if (method === 'PUT' && !existedBefore) status = 201;
      if (status === 201) {
        headers.location = absolute(
          base,
          `${body.resourceType}/${body.id}${versionId ? `/_history/${versionId}` : ''}`,
        );
      }
    }
    if (
      body.resourceType === 'Binary' &&
      method === 'GET' &&
      !/json/i.test(header(request.headers, 'accept') ?? '')
    ) {
      const binary = body as Binary;
      return {
        status,
        headers: { ...headers, 'content-type': binary.contentType ?? 'application/octet-stream' },
        body: Buffer.from(binary.data ?? '', 'base64'),
      };
    }
    return { status, headers, body };
  }

  return {
    repository,
    get baseUrl() {
      return baseUrl;
    },
    setBaseUrl(value: string) {
      baseUrl = value.replace(/\/$/, '');
    },
    handle,
    get authorization() {
      return authorization;
    },
    attachAuthorization(server) {
      authorization = server;
    },
    async seed(resources) {
      for (const resource of resources) await repository.seedResource(resource as unknown as MedplumResource);
    },
    addRoute(method, path, handler) {
      extraRoutes.set(`${method.toUpperCase()} ${path.replace(/^\/+|\/+$/g, '')}`, handler);
    },
    whenIdle: () => subscriptions.whenIdle(),
    heartbeat: (subscriptionId) => subscriptions.heartbeat(subscriptionId),
    allowSubscriptionEndpoint: (endpoint) => subscriptions.allowEndpoint(endpoint),
    get deliveries() {
      return subscriptions.deliveries;
    },
    async close() {
      subscriptions.close();
      await subscriptions.whenIdle();
      repository.clear();
    },
  };
}
