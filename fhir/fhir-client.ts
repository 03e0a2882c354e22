import type { Bundle, BundleEntry, CapabilityStatement, DocumentReference, FhirResource } from 'fhir/r4.js';
import { isFhirId } from './fhir-id.ts';
import {
  FhirRequestError,
  type FhirRequestName,
  isOperationOutcome,
  normalizeOperationOutcome,
  OperationOutcomeError,
  outcome,
  outcomeError,
} from './operation-outcome.ts';
import type { ScopeContext } from './smart-scopes.ts';

/**
 * The one way the service talks to a FHIR server: fetch with timeouts, retries on 429/5xx honouring
 * Retry-After, paging up to a cap, errors as OperationOutcomes, a bearer token that is only ever sent
 * to the FHIR base's own origin, a cap on every response's size counted while it streams in, and no
 * URL ever built from an id that is not a FHIR id.
 *
 * The transport is our own rather than fhir-kit-client's: that library reads every body whole with
 * `response.text()`, so a server could make the process hold any amount of memory before anything
 * here saw a byte.
 */
export interface AccessTokenSource {
  getToken(): Promise<string | undefined>;
  /** Forget a token the server refused (named, when known), so the next call asks for a fresh one. */
  invalidate(rejectedToken?: string): void;
  /** False when asking again brings the same token (a static one): a 401 then stands without another try. */
  readonly canRefresh?: boolean;
}

/** A fixed bearer token (a user's token from a SMART launch, or a site's static token). */
export function staticAccessToken(token: string): AccessTokenSource {
  return { getToken: async () => token, invalidate: () => {}, canRefresh: false };
}

/**
 * Whether the server took the token, once per answer: `accepted` for any answer but a 401 and a 5xx (a 403 or a
 * 404 means the token was read and believed), refused for a 401. `afterRefresh` marks a 401 to a token fetched
 * just after the previous one was refused: the new token does not help either.
 */
export interface AuthenticationObservation {
  accepted: boolean;
  status: number;
  afterRefresh: boolean;
}

/**
 * Proof that a write of a final note is the sign-off made on behalf of a clinician. Only the
 * lifecycle's sign-off passes it; every other write of a final or amended note is refused, so nothing
 * in the service can finalise a draft by itself.
 */
export interface SignOffAuthority {
  practitioner: string;
}

/** One GET inside a batch Bundle. */
export interface BatchRead {
  /** Relative to the base: `Patient/123`, `Condition?patient=Patient/123&_count=200`. */
  url: string;
}

/** 32 MiB: far above any real note or search page, far below what would strain the process. */
const defaultMaxResponseBytes = 32 * 1024 * 1024;

export interface FhirClientOptions {
  baseUrl: string;
  timeoutMs?: number;
  maxAttempts?: number;
  maxPages?: number;
  /** Largest response body accepted (after content decoding); larger ones are refused, not retried. */
  maxResponseBytes?: number;
  accessToken?: AccessTokenSource;
  /** Whose token this is (system for the service, user or patient for a clinician's launch): names scopes in 403s. */
  scopeContext?: ScopeContext;
  /**
   * Called with each answer's verdict on the token, so the service's readiness can follow whether its own token
   * still works. Not carried over by withAccessToken: another identity's 401 says nothing about the service's.
   */
  onAuthentication?: (observation: AuthenticationObservation) => void;
  /** Called before every request (each attempt): lets metrics and tests see all traffic. */
  onRequest?: (request: { method: string; url: string }) => void;
  sleep?: (milliseconds: number) => Promise<void>;
}

export interface CreateResult<T> {
  resource: T;
  /** False when a conditional create found the resource already there. */
  created: boolean;
}

interface Attempt {
  signal: AbortSignal;
  headers: Record<string, string>;
  /** What the request is, for its error messages. */
  request: FhirRequestName;
}

/** One entry of a transaction: normally a conditional create, so that a retried transaction adds nothing. */
export interface TransactionEntry {
  /** `urn:uuid:...`: other entries reference this one by it; the server replaces it with the real id. */
  fullUrl?: string;
  resource: FhirResource;
  request: { method: 'POST' | 'PUT'; url: string; ifNoneExist?: string; ifMatch?: string };
}

export interface TransactionEntryResult {
  /** 201 when the entry created its resource, 200 when a conditional create found it already there. */
  status: number;
  resource: FhirResource;
}

interface Answer {
  status: number;
  /** The parsed JSON body; an empty object when the body was empty. */
  body: Record<string, unknown>;
}

/**
 * A response larger than the configured cap. Asking again would bring the same bytes, so it is never
 * retried: the caller leaves that resource out (a note) or fails the job once.
 */
export class ResponseTooLargeError extends OperationOutcomeError {
  override readonly isRetryable = false;

  constructor(description: string, limit: number) {
    super(
      outcome(
        'too-long',
        `${description}: the response is larger than ${limit} bytes (fhir.maxResponseBytes); refused`,
      ),
      { status: 502 },
    );
    this.name = 'ResponseTooLargeError';
  }
}

const resourceTypePattern = /^[A-Z][A-Za-z]{1,63}$/;

/** Enough of an untrusted value to recognise it in an error, never all of it. */
function shown(value: unknown): string {
  const text = typeof value === 'string' ? value : String(value);
  return JSON.stringify(text.length > 70 ? `${text.slice(0, 70)}...` : text);
}

function requireId(value: unknown, what: string): string {
  if (!isFhirId(value)) throw outcomeError('invalid', `not a FHIR ${what}: ${shown(value)}`, 400);
  return value;
}

function requireResourceType(value: unknown): string {
  if (typeof value !== 'string' || !resourceTypePattern.test(value))
    throw outcomeError('invalid', `not a FHIR resource type: ${shown(value)}`, 400);
  return value;
}

/**
 * Refuses a path with a segment made only of dots, also when percent-encoded or written with
 * backslashes (URL parsers treat both like `/` and `..`), so a reference such as `Binary/..` or
 * `Patient/%2e%2e` can never resolve to another resource than the one it names.
 */
function refuseDotSegments(pathOrUrl: string): void {
  const path = pathOrUrl.replace(/^[a-z][a-z0-9+.-]*:\/\/[^/\\?#]*/i, '').split(/[?#]/)[0];
  let decoded = path;
  try {
    decoded = decodeURIComponent(path);
  } catch {
    // Malformed percent-encoding: check the raw text; the server will refuse it anyway.
  }
  for (const candidate of [path, decoded]) {
    if (candidate.split(/[/\\]/).some((segment) => /^\.+$/.test(segment)))
      throw outcomeError('invalid', `refused a path with a dot-only segment: ${shown(pathOrUrl)}`, 400);
  }
}

const defaultSleep = (milliseconds: number) =>
  new Promise<void>((resolve) => setTimeout(resolve, milliseconds));

function retryAfterSeconds(headers: Headers | undefined): number | undefined {
  const value = headers?.get('retry-after');
  if (!value) return undefined;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(0, seconds);
  const date = Date.parse(value);
  return Number.isFinite(date) ? Math.max(0, (date - Date.now()) / 1000) : undefined;
}

/**
 * The body, read chunk by chunk and abandoned (which aborts the request) as soon as it passes the
 * cap. A declared Content-Length over the cap is refused before any of the body is read; without
 * one (chunked), or when it lies, the count of decoded bytes decides. Counting after decoding means
 * a small gzip body that inflates past the cap is refused too.
 */
async function readBodyWithinCap(response: Response, limit: number, description: string): Promise<string> {
  const declared = Number(response.headers.get('content-length') ?? Number.NaN);
  if (Number.isFinite(declared) && declared > limit) {
    await response.body?.cancel().catch(() => {});
    throw new ResponseTooLargeError(description, limit);
  }
  if (!response.body) return '';
  const reader = response.body.getReader();
  const chunks: Uint8Array[] = [];
  let total = 0;
  for (;;) {
    const { done, value } = await reader.read();
    if (done) break;
    total += value.byteLength;
    if (total > limit) {
      chunks.length = 0;
      await reader.cancel().catch(() => {});
      throw new ResponseTooLargeError(description, limit);
    }
    chunks.push(value);
  }
  return new TextDecoder().decode(Buffer.concat(chunks, total));
}

/** Turns fetch failures (timeouts, refused connections) into OperationOutcomeErrors that say whether to retry. */
function toOutcomeError(
  error: unknown,
  method: string,
  path: string,
  request: FhirRequestName,
): OperationOutcomeError {
  if (error instanceof OperationOutcomeError) return error;
  const name = (error as { name?: string }).name;
  if (name === 'TimeoutError' || name === 'AbortError') {
    return new FhirRequestError(request, outcome('timeout', `${method} ${path}: timed out`), {
      status: 504,
      cause: error,
      description: 'no answer from the FHIR server before the timeout (fhir.timeoutMs)',
    });
  }
  if (error instanceof TypeError) {
    // fetch() failing outright: connection refused or reset. Worth another try.
    return new FhirRequestError(request, outcome('transient', `${method} ${path}: ${error.message}`), {
      status: 503,
      cause: error,
      description: `the FHIR server could not be reached (${error.message})`,
    });
  }
  return normalizeOperationOutcome(error);
}

/** What a relative FHIR path asks for: `Patient/1` is a read, `Condition?patient=...` a search. */
function requestNameOfPath(method: string, relativePath: string): FhirRequestName {
  const [path] = relativePath.replace(/^\/+/, '').split('?');
  const [resourceType, id, operation] = path.split('/');
  if (!resourceType || !resourceTypePattern.test(resourceType))
    return { interaction: resourceType === 'metadata' ? 'capabilities' : method.toLowerCase() };
  if (method === 'GET') {
    const isInstance = id && !id.startsWith('$') && id !== '_history' && id !== '_search';
    if (!isInstance) return { interaction: 'search', resourceType };
    if (operation === '_history') return { interaction: 'vread', resourceType };
    return { interaction: 'read', resourceType };
  }
  const interactions: Record<string, string> = {
    POST: 'create',
    PUT: 'update',
    PATCH: 'patch',
    DELETE: 'delete',
  };
  return { interaction: interactions[method] ?? method.toLowerCase(), resourceType };
}

function batchEntryResult(
  entry: BundleEntry,
  url: string,
  scopeContext: ScopeContext,
): FhirResource | OperationOutcomeError {
  const status = Number.parseInt(entry.response?.status ?? '', 10);
  if (entry.resource && (!Number.isFinite(status) || (status >= 200 && status < 300)))
    return entry.resource as FhirResource;
  const serverOutcome = isOperationOutcome(entry.response?.outcome)
    ? entry.response.outcome
    : isOperationOutcome(entry.resource)
      ? entry.resource
      : outcome('exception', `batch GET ${url}: HTTP ${Number.isFinite(status) ? status : 'unknown'}`);
  return new FhirRequestError(requestNameOfPath('GET', url), serverOutcome, {
    status: Number.isFinite(status) ? status : 502,
    scopeContext,
  });
}

function declaresProfile(resource: FhirResource): boolean {
  return (resource.meta?.profile?.length ?? 0) > 0;
}

/** A final (or amended) note may only be written by the sign-off made on behalf of a clinician. */
function refuseUnsignedFinalNote(resource: FhirResource, signOff: SignOffAuthority | undefined): void {
  if (resource.resourceType !== 'DocumentReference') return;
  const docStatus = (resource as DocumentReference).docStatus;
  if (docStatus !== 'final' && docStatus !== 'amended') return;
  if (signOff && /^Practitioner\/[A-Za-z0-9\-.]{1,64}$/.test(signOff.practitioner)) return;
  throw outcomeError(
    'forbidden',
    'a note can only become final through a clinician sign-off; the service never finalises a draft',
    403,
  );
}

export class FhirClient {
  readonly baseUrl: string;
  readonly origin: string;
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;
  readonly #maxPages: number;
  readonly #maxResponseBytes: number;
  readonly #accessToken: AccessTokenSource | undefined;
  readonly #onRequest: FhirClientOptions['onRequest'];
  readonly #scopeContext: ScopeContext;
  readonly #sleep: (milliseconds: number) => Promise<void>;
  readonly #options: FhirClientOptions;
  #capabilities: Promise<CapabilityStatement | undefined> | undefined;
  /** Round trips made, for benchmarks and metrics. */
  requestCount = 0;

  constructor(options: FhirClientOptions) {
    this.baseUrl = options.baseUrl.replace(/\/+$/, '');
    this.origin = new URL(this.baseUrl).origin;
    this.#timeoutMs = options.timeoutMs ?? 15_000;
    this.#maxAttempts = options.maxAttempts ?? 4;
    this.#maxPages = options.maxPages ?? 50;
    this.#maxResponseBytes = options.maxResponseBytes ?? defaultMaxResponseBytes;
    this.#accessToken = options.accessToken;
    this.#onRequest = options.onRequest;
    this.#scopeContext = options.scopeContext ?? 'system';
    this.#sleep = options.sleep ?? defaultSleep;
    this.#options = options;
  }

  /** The same server and settings with another token: the review app acts with the clinician's own token. */
  withAccessToken(accessToken: AccessTokenSource | undefined): FhirClient {
    return new FhirClient({ ...this.#options, accessToken, onAuthentication: undefined });
  }

  /**
   * The absolute URL for a relative FHIR path, refusing anything that would leave the server's origin
   * or climb out of the resource it names through a dot-only segment.
   */
  resolveUrl(pathOrUrl: string): string {
    refuseDotSegments(pathOrUrl);
    const url = /^https?:\/\//i.test(pathOrUrl)
      ? new URL(pathOrUrl)
      : new URL(`${this.baseUrl}/${pathOrUrl.replace(/^\/+/, '')}`);
    if (url.origin !== this.origin) {
      throw outcomeError(
        'security',
        `refused to follow a URL on another origin (${url.origin}); the token is only for ${this.origin}`,
        502,
      );
    }
    return url.toString();
  }

  /** One HTTP exchange: JSON in and out, the body read within the response cap. */
  async #send(
    method: string,
    url: string,
    attempt: Attempt,
    options: { body?: unknown; headers?: Record<string, string> } = {},
  ): Promise<Answer> {
    // Defence in depth: every caller resolves its URL, but check the origin here too, before the
    // request (and the Authorization header set for this origin) leaves.
    if (new URL(url).origin !== this.origin)
      throw outcomeError('security', 'refused a cross-origin request', 502);
    const description = `${method} ${new URL(url).pathname}`;
    const response = await fetch(url, {
      method,
      headers: {
        Accept: 'application/fhir+json',
        ...(options.body !== undefined ? { 'Content-Type': 'application/fhir+json' } : {}),
        ...options.headers,
        ...attempt.headers,
      },
      ...(options.body !== undefined ? { body: JSON.stringify(options.body) } : {}),
      signal: attempt.signal,
    });
    const text = await readBodyWithinCap(response, this.#maxResponseBytes, description);
    let body: Record<string, unknown> = {};
    let parsed = text.trim() === '';
    if (!parsed) {
      try {
        body = JSON.parse(text);
        parsed = true;
      } catch {
        // Not JSON: an HTML error page from a proxy, or a server answering in another format.
      }
    }
    if (!response.ok) {
      const serverOutcome = parsed && isOperationOutcome(body) ? body : undefined;
      throw new FhirRequestError(
        attempt.request,
        serverOutcome ??
          outcome(
            response.status === 404 ? 'not-found' : 'exception',
            `${description}: HTTP ${response.status}`,
          ),
        {
          status: response.status,
          retryAfterSeconds: retryAfterSeconds(response.headers),
          scopeContext: this.#scopeContext,
        },
      );
    }
    if (!parsed || typeof body !== 'object' || body === null)
      throw outcomeError('structure', `${description}: the server did not answer with a JSON resource`, 502);
    return { status: response.status, body };
  }

  async #withRetries<T>(
    method: string,
    path: string,
    call: (attempt: Attempt) => Promise<T>,
    request: FhirRequestName = requestNameOfPath(method, path),
  ): Promise<T> {
    let refreshedToken = false;
    for (let attempt = 1; ; attempt++) {
      const token = await this.#accessToken?.getToken();
      this.requestCount++;
      this.#onRequest?.({ method, url: path });
      try {
        const answer = await call({
          signal: AbortSignal.timeout(this.#timeoutMs),
          headers: token ? { Authorization: `Bearer ${token}` } : {},
          request,
        });
        this.#options.onAuthentication?.({ accepted: true, status: 200, afterRefresh: refreshedToken });
        return answer;
      } catch (caught) {
        const error = toOutcomeError(caught, method, path, request);
        // Only the server's own answers count: no answer (timeouts, refused connections) says nothing about the token.
        if (error instanceof FhirRequestError && error.status < 500)
          this.#options.onAuthentication?.({
            accepted: error.status !== 401,
            status: error.status,
            afterRefresh: refreshedToken,
          });
        if (
          error.status === 401 &&
          this.#accessToken &&
          this.#accessToken.canRefresh !== false &&
          !refreshedToken
        ) {
          // A token can be revoked or expire early: one fresh token, then the 401 stands. Naming the
          // refused token lets a provider shared by concurrent callers fetch only one new token.
          refreshedToken = true;
          this.#accessToken.invalidate(token);
          attempt--;
          continue;
        }
        if (!error.isRetryable || attempt >= this.#maxAttempts) throw error;
        const backoff = Math.min(30_000, 250 * 2 ** (attempt - 1)) * (0.5 + Math.random() / 2);
        const waitMs =
          error.retryAfterSeconds !== undefined ? Math.min(60_000, error.retryAfterSeconds * 1000) : backoff;
        await this.#sleep(waitMs);
      }
    }
  }

  /** A GET of a URL already resolved against the base, with retries; the parsed body. */
  async #getJson(path: string, url: string, request?: FhirRequestName): Promise<Record<string, unknown>> {
    return (await this.#withRetries('GET', path, (attempt) => this.#send('GET', url, attempt), request)).body;
  }

  async read<T extends FhirResource>(resourceType: T['resourceType'], id: string): Promise<T> {
    const path = `${requireResourceType(resourceType)}/${requireId(id, 'id')}`;
    return (await this.#getJson(path, `${this.baseUrl}/${path}`)) as unknown as T;
  }

  /** One exact version, for Provenance checks and sign-off revisions. */
  async vread<T extends FhirResource>(
    resourceType: T['resourceType'],
    id: string,
    versionId: string,
  ): Promise<T> {
    const path = `${requireResourceType(resourceType)}/${requireId(id, 'id')}/_history/${requireId(versionId, 'version id')}`;
    return (await this.#getJson(path, `${this.baseUrl}/${path}`)) as unknown as T;
  }

  /** The server's CapabilityStatement, read once; undefined when the server does not serve one. */
  capabilities(): Promise<CapabilityStatement | undefined> {
    this.#capabilities ??= this.#getJson('metadata', `${this.baseUrl}/metadata`)
      .then((statement) =>
        statement.resourceType === 'CapabilityStatement'
          ? (statement as unknown as CapabilityStatement)
          : undefined,
      )
      .catch(() => undefined);
    return this.#capabilities;
  }

  /** Whether the server says it accepts batch Bundles (rest[mode=server].interaction batch). */
  async supportsBatch(): Promise<boolean> {
    const statement = await this.capabilities();
    return Boolean(
      statement?.rest?.some(
        (rest) =>
          rest.mode === 'server' && rest.interaction?.some((interaction) => interaction.code === 'batch'),
      ),
    );
  }

  /**
   * Several GETs in one round trip. Each result is the entry's resource, or an OperationOutcomeError
   * for an entry the server refused (the caller decides whether to retry it on its own).
   */
  async batch(reads: BatchRead[]): Promise<(FhirResource | OperationOutcomeError)[]> {
    for (const read of reads) refuseDotSegments(read.url);
    const body: Bundle = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: reads.map((read) => ({ request: { method: 'GET', url: read.url.replace(/^\/+/, '') } })),
    };
    const response = (
      await this.#withRetries(
        'POST',
        'batch',
        (attempt) => this.#send('POST', `${this.baseUrl}/`, attempt, { body }),
        { interaction: 'batch', entries: reads.map((read) => requestNameOfPath('GET', read.url)) },
      )
    ).body as unknown as Bundle;
    if (response?.resourceType !== 'Bundle' || (response.entry?.length ?? 0) !== reads.length) {
      throw outcomeError('invalid', 'batch response does not answer every request', 502);
    }
    return (response.entry ?? []).map((entry, index) =>
      batchEntryResult(entry, reads[index].url, this.#scopeContext),
    );
  }

  /** The matching resources of a search Bundle already in hand (from a batch), following its `next` links. */
  async collectSearchPages<T extends FhirResource>(
    resourceType: T['resourceType'],
    firstPage: Bundle,
  ): Promise<T[]> {
    return this.#collectPages<T>(resourceType, firstPage);
  }

  /** One page of search results as the server returns it. */
  async searchPage(resourceType: string, params: Record<string, string | number>): Promise<Bundle> {
    const query = new URLSearchParams(Object.entries(params).map(([key, value]) => [key, String(value)]));
    const path = requireResourceType(resourceType);
    const url = `${this.baseUrl}/${path}${query.size > 0 ? `?${query}` : ''}`;
    return (await this.#getJson(path, url)) as unknown as Bundle;
  }

  /** Follows `next` links (same origin only) up to the page cap and returns the matching resources. */
  async search<T extends FhirResource>(
    resourceType: T['resourceType'],
    params: Record<string, string | number> = {},
  ): Promise<T[]> {
    return this.#collectPages<T>(resourceType, await this.searchPage(resourceType, params));
  }

  async #collectPages<T extends FhirResource>(
    resourceType: T['resourceType'],
    firstPage: Bundle,
  ): Promise<T[]> {
    const results: T[] = [];
    let page: Bundle | undefined = firstPage;
    for (let pageNumber = 1; page; pageNumber++) {
      for (const entry of page.entry ?? []) {
        if (entry.search?.mode === 'include' || entry.search?.mode === 'outcome') continue;
        if (entry.resource?.resourceType === resourceType) results.push(entry.resource as T);
      }
      const next = page.link?.find((link) => link.relation === 'next')?.url;
      if (!next) break;
      if (pageNumber >= this.#maxPages) {
        throw outcomeError('too-costly', `${resourceType} search exceeded ${this.#maxPages} pages`, 502);
      }
      const nextUrl = this.resolveUrl(next);
      page = (await this.#getJson(`${resourceType} (page ${pageNumber + 1})`, nextUrl, {
        interaction: 'search',
        resourceType,
      })) as unknown as Bundle;
    }
    return results;
  }

  /** Create, or with `ifNoneExist` a conditional create: a repeated call finds the first resource instead of adding one. */
  async create<T extends FhirResource>(
    resource: T,
    options: { ifNoneExist?: string; signOff?: SignOffAuthority } = {},
  ): Promise<CreateResult<T>> {
    const resourceType = requireResourceType(resource.resourceType);
    refuseUnsignedFinalNote(resource, options.signOff);
    const headers: Record<string, string> = {};
    if (options.ifNoneExist) headers['If-None-Exist'] = options.ifNoneExist;
    const response = await this.#withRetries(
      'POST',
      resourceType,
      (attempt) =>
        this.#send('POST', `${this.baseUrl}/${resourceType}`, attempt, { body: resource, headers }),
      { interaction: 'create', resourceType, declaresProfile: declaresProfile(resource) },
    );
    if (!response.body.resourceType && options.ifNoneExist) {
      // Some servers answer 200 with an empty body when the resource exists: read it back.
      const [existing] = await this.search<T>(
        resource.resourceType,
        Object.fromEntries(new URLSearchParams(options.ifNoneExist)),
      );
      if (!existing) throw outcomeError('exception', 'conditional create returned no resource', 502);
      return { resource: existing, created: false };
    }
    return { resource: response.body as unknown as T, created: response.status === 201 };
  }

  /**
   * A transaction Bundle: every entry is written, or none is. Entries reference each other by their
   * `urn:uuid:` fullUrl. The answer is checked entry by entry: a server that answers 200 with a failed
   * entry inside (Medplum's quota answers 429 entries) has not done the work, and the failure is raised
   * as that entry's. Retried like any request on 429/5xx and timeouts, which is safe only because
   * callers make every entry conditional (a repeated transaction finds what the first one wrote).
   */
  async transaction(
    entries: TransactionEntry[],
    options: { signOff?: SignOffAuthority } = {},
  ): Promise<TransactionEntryResult[]> {
    const names: FhirRequestName[] = entries.map((entry) => ({
      interaction: entry.request.method === 'POST' ? 'create' : 'update',
      resourceType: requireResourceType(entry.resource.resourceType),
      declaresProfile: declaresProfile(entry.resource),
    }));
    for (const entry of entries) {
      refuseDotSegments(entry.request.url);
      refuseUnsignedFinalNote(entry.resource, options.signOff);
    }
    const request: FhirRequestName = { interaction: 'transaction', entries: names };
    const body: Bundle = {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: entries.map((entry) => ({
        ...(entry.fullUrl ? { fullUrl: entry.fullUrl } : {}),
        resource: entry.resource,
        request: { ...entry.request, url: entry.request.url.replace(/^\/+/, '') },
      })),
    };
    const response = await this.#withRetries(
      'POST',
      'transaction',
      async (attempt) => {
        const answer = await this.#send('POST', `${this.baseUrl}/`, attempt, {
          body,
          headers: { Prefer: 'return=representation' },
        });
        const bundle = answer.body as unknown as Bundle;
        if (bundle.resourceType !== 'Bundle' || (bundle.entry?.length ?? 0) !== entries.length)
          throw new FhirRequestError(
            request,
            outcome('invalid', 'the transaction response does not answer every entry'),
            { status: 502, scopeContext: this.#scopeContext },
          );
        (bundle.entry ?? []).forEach((entry, index) => {
          const status = Number.parseInt(entry.response?.status ?? '', 10);
          if (status >= 200 && status < 300) return;
          const entryOutcome = isOperationOutcome(entry.response?.outcome)
            ? entry.response.outcome
            : outcome('exception', `entry answered ${entry.response?.status ?? 'without a status'}`);
          throw new FhirRequestError({ interaction: 'transaction', entries: [names[index]] }, entryOutcome, {
            status: Number.isFinite(status) ? status : 502,
            scopeContext: this.#scopeContext,
          });
        });
        return bundle;
      },
      request,
    );
    const results: TransactionEntryResult[] = [];
    for (const [index, entry] of (response.entry ?? []).entries()) {
      const status = Number.parseInt(entry.response?.status ?? '', 10);
      let resource = entry.resource as FhirResource | undefined;
      if (!resource?.id) {
        // A server that ignored `Prefer: return=representation`: read what the entry wrote.
        const location = entry.response?.location;
        if (!location)
          throw outcomeError(
            'exception',
            `transaction entry ${index + 1} returned neither resource nor location`,
            502,
          );
        const [type, id] = location.replace(this.baseUrl, '').replace(/^\/+/, '').split('/');
        resource = await this.read(type as FhirResource['resourceType'], id);
      }
      results.push({ status, resource });
    }
    return results;
  }

  /** Update with optimistic locking when the version read is known (If-Match), so a concurrent edit is not lost. */
  async update<T extends FhirResource>(
    resource: T,
    options: { ifMatchVersion?: string; signOff?: SignOffAuthority } = {},
  ): Promise<T> {
    if (!resource.id) throw outcomeError('invalid', 'update needs an id');
    const path = `${requireResourceType(resource.resourceType)}/${requireId(resource.id, 'id')}`;
    refuseUnsignedFinalNote(resource, options.signOff);
    const headers: Record<string, string> = {};
    if (options.ifMatchVersion)
      headers['If-Match'] = `W/"${requireId(options.ifMatchVersion, 'version id')}"`;
    const response = await this.#withRetries(
      'PUT',
      path,
      (attempt) => this.#send('PUT', `${this.baseUrl}/${path}`, attempt, { body: resource, headers }),
      {
        interaction: 'update',
        resourceType: resource.resourceType,
        declaresProfile: declaresProfile(resource),
      },
    );
    return response.body as unknown as T;
  }

  /** Any GET relative to the base or on the base's own origin (Binary content, operations). */
  async get<T = unknown>(pathOrUrl: string): Promise<T> {
    const url = this.resolveUrl(pathOrUrl);
    const basePath = new URL(this.baseUrl).pathname.replace(/\/+$/, '');
    const relative = new URL(url).pathname.slice(basePath.length);
    return (await this.#getJson(
      new URL(url).pathname,
      url,
      requestNameOfPath('GET', relative),
    )) as unknown as T;
  }
}
