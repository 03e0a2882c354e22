import type { Bundle, BundleEntry, CapabilityStatement, DocumentReference, FhirResource } from 'fhir/r4.js';
import { Client, RESPONSE_KEY } from 'fhir-kit-client';
import {
  isOperationOutcome,
  normalizeOperationOutcome,
  OperationOutcomeError,
  outcome,
  outcomeError,
} from './operation-outcome.ts';

/**
 * The one way the service talks to a FHIR server: fhir-kit-client underneath, with timeouts, retries
 * on 429/5xx honouring Retry-After, paging up to a cap, errors as OperationOutcomes, and a bearer
 * token that is only ever sent to the FHIR base's own origin.
 */
export interface AccessTokenSource {
  getToken(): Promise<string | undefined>;
  /** Forget a token the server refused (named, when known), so the next call asks for a fresh one. */
  invalidate(rejectedToken?: string): void;
}

/** A fixed bearer token (a user's token from a SMART launch, or a site's static token). */
export function staticAccessToken(token: string): AccessTokenSource {
  return { getToken: async () => token, invalidate: () => {} };
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

export interface FhirClientOptions {
  baseUrl: string;
  timeoutMs?: number;
  maxAttempts?: number;
  maxPages?: number;
  accessToken?: AccessTokenSource;
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
}

type KitResponse = Record<string, unknown> & { [RESPONSE_KEY]?: Response };

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

/** Turns fhir-kit-client's errors and fetch failures into OperationOutcomeErrors that say whether to retry. */
function toOutcomeError(error: unknown, method: string, path: string): OperationOutcomeError {
  if (error instanceof OperationOutcomeError) return error;
  const response = (error as { response?: { status?: number; data?: unknown } }).response;
  if (response?.status) {
    const headers = (error as { config?: { headers?: Headers } }).config?.headers;
    const serverOutcome = isOperationOutcome(response.data)
      ? response.data
      : outcome(
          response.status === 404 ? 'not-found' : 'exception',
          `${method} ${path}: HTTP ${response.status}`,
        );
    return new OperationOutcomeError(serverOutcome, {
      status: response.status,
      cause: error,
      retryAfterSeconds: retryAfterSeconds(headers),
    });
  }
  const name = (error as { name?: string }).name;
  if (name === 'TimeoutError' || name === 'AbortError') {
    return new OperationOutcomeError(outcome('timeout', `${method} ${path}: timed out`), {
      status: 504,
      cause: error,
    });
  }
  if (error instanceof TypeError) {
    // fetch() failing outright: connection refused or reset. Worth another try.
    return new OperationOutcomeError(outcome('transient', `${method} ${path}: ${error.message}`), {
      status: 503,
      cause: error,
    });
  }
  return normalizeOperationOutcome(error);
}

function batchEntryResult(entry: BundleEntry, url: string): FhirResource | OperationOutcomeError {
  const status = Number.parseInt(entry.response?.status ?? '', 10);
  if (entry.resource && (!Number.isFinite(status) || (status >= 200 && status < 300)))
    return entry.resource as FhirResource;
  const serverOutcome = isOperationOutcome(entry.response?.outcome)
    ? entry.response.outcome
    : isOperationOutcome(entry.resource)
      ? entry.resource
      : outcome('exception', `batch GET ${url}: HTTP ${Number.isFinite(status) ? status : 'unknown'}`);
  return new OperationOutcomeError(serverOutcome, { status: Number.isFinite(status) ? status : 502 });
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
  readonly #kit: Client;
  readonly #timeoutMs: number;
  readonly #maxAttempts: number;
  readonly #maxPages: number;
  readonly #accessToken: AccessTokenSource | undefined;
  readonly #onRequest: FhirClientOptions['onRequest'];
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
    this.#accessToken = options.accessToken;
    this.#onRequest = options.onRequest;
    this.#sleep = options.sleep ?? defaultSleep;
    this.#options = options;
    this.#kit = new Client({
      baseUrl: this.baseUrl,
      customHeaders: { Accept: 'application/fhir+json' },
      requestSigner: (url, init) => this.#signRequest(url, init),
    });
  }

  /** The same server and settings with another token: the review app acts with the clinician's own token. */
  withAccessToken(accessToken: AccessTokenSource | undefined): FhirClient {
    return new FhirClient({ ...this.#options, accessToken });
  }

  /** The absolute URL for a relative FHIR path, refusing anything that would leave the server's origin. */
  resolveUrl(pathOrUrl: string): string {
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

  async #signRequest(url: string, _init: RequestInit): Promise<void> {
    // Defence in depth: fhir-kit-client follows absolute URLs as given, so check the origin here too,
    // before the request (and the Authorization header set for this origin) leaves.
    if (new URL(url).origin !== this.origin)
      throw outcomeError('security', 'refused a cross-origin request', 502);
  }

  async #withRetries<T>(method: string, path: string, call: (attempt: Attempt) => Promise<T>): Promise<T> {
    let refreshedToken = false;
    for (let attempt = 1; ; attempt++) {
      const token = await this.#accessToken?.getToken();
      this.requestCount++;
      this.#onRequest?.({ method, url: path });
      try {
        return await call({
          signal: AbortSignal.timeout(this.#timeoutMs),
          headers: token ? { Authorization: `Bearer ${token}` } : {},
        });
      } catch (caught) {
        const error = toOutcomeError(caught, method, path);
        if (error.status === 401 && this.#accessToken && !refreshedToken) {
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

  async read<T extends FhirResource>(resourceType: T['resourceType'], id: string): Promise<T> {
    if (!/^[A-Za-z0-9\-.]{1,64}$/.test(id))
      throw outcomeError('invalid', `not a FHIR id: ${JSON.stringify(id)}`);
    return (await this.#withRetries('GET', `${resourceType}/${id}`, (attempt) =>
      this.#kit.read({ resourceType, id, options: attempt }),
    )) as unknown as T;
  }

  /** One exact version, for Provenance checks and sign-off revisions. */
  async vread<T extends FhirResource>(
    resourceType: T['resourceType'],
    id: string,
    versionId: string,
  ): Promise<T> {
    if (!/^[A-Za-z0-9\-.]{1,64}$/.test(id) || !/^[A-Za-z0-9\-.]{1,64}$/.test(versionId))
      throw outcomeError('invalid', `not a FHIR id or version: ${JSON.stringify(`${id}/${versionId}`)}`);
    return (await this.#withRetries('GET', `${resourceType}/${id}/_history/${versionId}`, (attempt) =>
      this.#kit.vread({ resourceType, id, version: versionId, options: attempt }),
    )) as unknown as T;
  }

  /** The server's CapabilityStatement, read once; undefined when the server does not serve one. */
  capabilities(): Promise<CapabilityStatement | undefined> {
    this.#capabilities ??= this.#withRetries('GET', 'metadata', (attempt) =>
      this.#kit.capabilityStatement(attempt),
    )
      .then((statement) =>
        (statement as { resourceType?: string }).resourceType === 'CapabilityStatement'
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
    const body: Bundle = {
      resourceType: 'Bundle',
      type: 'batch',
      entry: reads.map((read) => ({ request: { method: 'GET', url: read.url.replace(/^\/+/, '') } })),
    };
    const response = (await this.#withRetries('POST', 'batch', (attempt) =>
      this.#kit.batch({ body: body as never, options: attempt }),
    )) as unknown as Bundle;
    if (response?.resourceType !== 'Bundle' || (response.entry?.length ?? 0) !== reads.length) {
      throw outcomeError('invalid', 'batch response does not answer every request', 502);
    }
    return (response.entry ?? []).map((entry, index) => batchEntryResult(entry, reads[index].url));
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
    const searchParams = Object.fromEntries(
      Object.entries(params).map(([key, value]) => [key, String(value)]),
    );
    return (await this.#withRetries('GET', resourceType, (attempt) =>
      this.#kit.search({ resourceType, searchParams, options: attempt }),
    )) as unknown as Bundle;
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
      page = (await this.#withRetries('GET', `${resourceType} (page ${pageNumber + 1})`, (attempt) =>
        this.#kit.request(nextUrl, { options: attempt }),
      )) as unknown as Bundle;
    }
    return results;
  }

  /** Create, or with `ifNoneExist` a conditional create: a repeated call finds the first resource instead of adding one. */
  async create<T extends FhirResource>(
    resource: T,
    options: { ifNoneExist?: string; signOff?: SignOffAuthority } = {},
  ): Promise<CreateResult<T>> {
    refuseUnsignedFinalNote(resource, options.signOff);
    const headers: Record<string, string> = { 'Content-Type': 'application/fhir+json' };
    if (options.ifNoneExist) headers['If-None-Exist'] = options.ifNoneExist;
    const response = (await this.#withRetries('POST', resource.resourceType, (attempt) =>
      this.#kit.create({
        resourceType: resource.resourceType,
        body: resource as never,
        options: { signal: attempt.signal, headers: { ...headers, ...attempt.headers } },
      }),
    )) as unknown as KitResponse;
    const status = response[RESPONSE_KEY]?.status ?? 201;
    if (!response.resourceType && options.ifNoneExist) {
      // Some servers answer 200 with an empty body when the resource exists: read it back.
      const [existing] = await this.search<T>(
        resource.resourceType,
        Object.fromEntries(new URLSearchParams(options.ifNoneExist)),
      );
      if (!existing) throw outcomeError('exception', 'conditional create returned no resource', 502);
      return { resource: existing, created: false };
    }
    return { resource: response as unknown as T, created: status === 201 };
  }

  /** Update with optimistic locking when the version read is known (If-Match), so a concurrent edit is not lost. */
  async update<T extends FhirResource>(
    resource: T,
    options: { ifMatchVersion?: string; signOff?: SignOffAuthority } = {},
  ): Promise<T> {
    if (!resource.id) throw outcomeError('invalid', 'update needs an id');
    refuseUnsignedFinalNote(resource, options.signOff);
    const headers: Record<string, string> = { 'Content-Type': 'application/fhir+json' };
    if (options.ifMatchVersion) headers['If-Match'] = `W/"${options.ifMatchVersion}"`;
    return (await this.#withRetries('PUT', `${resource.resourceType}/${resource.id}`, (attempt) =>
      this.#kit.update({
        resourceType: resource.resourceType,
        id: resource.id as string,
        body: resource as never,
        options: { signal: attempt.signal, headers: { ...headers, ...attempt.headers } },
      }),
    )) as unknown as T;
  }

  /** Any GET relative to the base or on the base's own origin (Binary content, operations). */
  async get<T = unknown>(pathOrUrl: string): Promise<T> {
    const url = this.resolveUrl(pathOrUrl);
    return (await this.#withRetries('GET', new URL(url).pathname, (attempt) =>
      this.#kit.request(url, { options: attempt }),
    )) as unknown as T;
  }
}
