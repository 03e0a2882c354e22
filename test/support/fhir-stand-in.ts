import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A small in-memory FHIR R4 server for intake tests: read, vread-free versioning, search with the
 * parameters the service uses (patient/subject, identifier, target, agent, _lastUpdated, _sort, _count with
 * paging), conditional create (If-None-Exist), update, delete (410 afterwards), transaction Bundles,
 * and the Backport operations $status and $events. Tests can write resources with a chosen
 * lastUpdated (a late commit), refuse chosen writes as an access policy would, and read counters of
 * what was created.
 *
 * Transactions are as strict as real servers': `urn:uuid:` fullUrls are resolved in references and
 * in If-None-Exist conditions, a conditional create that matches answers 200 with the existing
 * resource, and any failing entry fails the whole Bundle with nothing written.
 */
export type StandInResource = Resource;
type Resource = {
  resourceType: string;
  id?: string;
  meta?: { versionId?: string; lastUpdated?: string };
} & Record<string, unknown>;

interface Entry {
  current: Resource;
  deleted: boolean;
}

export interface SubscriptionEventLog {
  status: string;
  events: { number: number; focus: string; timestamp: string }[];
}

export interface FhirStandIn {
  url: string;
  write(resource: Resource, options?: { lastUpdated?: string }): Resource;
  remove(resourceType: string, id: string): void;
  all(resourceType: string): Resource[];
  /** The current version of one resource (throws when absent, to keep tests short). */
  get(resourceType: string, id: string): Resource;
  /** Successful creates (201) per resourceType. */
  created: Map<string, number>;
  /** Every request, as `METHOD path`. */
  requests: string[];
  subscriptions: Map<string, SubscriptionEventLog>;
  /** Adds one event to a subscription's log, returning its number. */
  recordEvent(subscriptionId: string, focus: string): number;
  close(): Promise<void>;
}

/** A write refused as a server's access policy refuses it: the status and the server's diagnostics. */
export interface WriteRefusal {
  status: number;
  diagnostics: string;
  code?: string;
}

export interface FhirStandInOptions {
  /** Delay added to every answer, so work stays in flight long enough to be interrupted. */
  latencyMs?: number;
  port?: number;
  /** Whether `POST [base]` takes transaction Bundles (default true; said in the CapabilityStatement). */
  transactions?: boolean;
  /**
   * Called for every client write (a REST create or update, and each entry of a transaction, which
   * then fails whole): a refusal answers with its status, undefined lets the write through.
   */
  refuseWrite?: (resource: Resource, interaction: 'create' | 'update') => WriteRefusal | undefined;
  /** CapabilityStatement.software, e.g. `{ name: 'Medplum', version: '5.0.10' }` to be recognised as Medplum. */
  software?: { name: string; version?: string };
}

function referenceMatches(value: unknown, wanted: string): boolean {
  const reference = (value as { reference?: string } | undefined)?.reference;
  if (!reference) return false;
  return reference === wanted || reference.endsWith(`/${wanted}`);
}

function compareInstant(prefixed: string, lastUpdated: string | undefined): boolean {
  const match = /^(gt|ge|lt|le|eq)?(.+)$/.exec(prefixed);
  if (!match || !lastUpdated) return false;
  const wanted = Date.parse(match[2]);
  const actual = Date.parse(lastUpdated);
  switch (match[1] ?? 'eq') {
    case 'gt':
      return actual > wanted;
    case 'ge':
      return actual >= wanted;
    case 'lt':
      return actual < wanted;
    case 'le':
      return actual <= wanted;
    default:
      return actual === wanted;
  }
}

function matches(resource: Resource, params: URLSearchParams): boolean {
  for (const [name, value] of params) {
    if (name === 'patient' || name === 'subject') {
      if (!referenceMatches(resource.subject, value) && !referenceMatches(resource.patient, value))
        return false;
    } else if (name === 'identifier') {
      const [system, code] = value.includes('|') ? value.split('|') : [undefined, value];
      const identifiers = (resource.identifier as { system?: string; value?: string }[] | undefined) ?? [];
      if (
        !identifiers.some((item) => item.value === code && (system === undefined || item.system === system))
      )
        return false;
    } else if (name === 'target') {
      const targets = (resource.target as { reference?: string }[] | undefined) ?? [];
      if (!targets.some((target) => referenceMatches(target, value))) return false;
    } else if (name === 'agent') {
      const agents = (resource.agent as { who?: { reference?: string } }[] | undefined) ?? [];
      if (!agents.some((agent) => referenceMatches(agent.who, value))) return false;
    } else if (name === '_lastUpdated') {
      if (!compareInstant(value, resource.meta?.lastUpdated)) return false;
    } else if (name === '_id') {
      if (resource.id !== value) return false;
    } else if (name === 'url' || name === 'criteria' || name === 'status') {
      const field =
        name === 'url' ? (resource.channel as { endpoint?: string } | undefined)?.endpoint : resource[name];
      if (field !== value) return false;
    }
  }
  return true;
}

function send(response: ServerResponse, status: number, body: unknown, headers: Record<string, string> = {}) {
  const text = body === undefined ? '' : JSON.stringify(body);
  response.writeHead(status, { 'content-type': 'application/fhir+json', ...headers });
  response.end(text);
}

const outcome = (code: string, diagnostics: string, expression?: string[]) => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'error', code, diagnostics, ...(expression ? { expression } : {}) }],
});

const placeholderPattern = /urn:uuid:[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}/gi;

/** A failed transaction entry: the whole Bundle answers with it. */
class EntryFailure extends Error {
  readonly status: number;
  readonly body: unknown;
  constructor(status: number, code: string, diagnostics: string, index: number) {
    super(diagnostics);
    this.status = status;
    this.body = outcome(code, diagnostics, [`Bundle.entry[${index}]`]);
  }
}

/** Every `urn:uuid:` in the value replaced by what it stands for; an unknown one fails the entry. */
function resolvePlaceholders<T>(value: T, resolved: Map<string, string>, index: number): T {
  const text = JSON.stringify(value).replace(placeholderPattern, (placeholder) => {
    const reference = resolved.get(placeholder.toLowerCase());
    if (!reference)
      throw new EntryFailure(
        400,
        'invalid',
        `${placeholder} is not the fullUrl of an entry in this Bundle`,
        index,
      );
    return reference;
  });
  return JSON.parse(text) as T;
}

async function readBody(request: IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  for await (const chunk of request) chunks.push(chunk as Buffer);
  return Buffer.concat(chunks).toString('utf8');
}

export async function startFhirStandIn(options: FhirStandInOptions = {}): Promise<FhirStandIn> {
  const store = new Map<string, Map<string, Entry>>();
  const created = new Map<string, number>();
  const requests: string[] = [];
  const subscriptions = new Map<string, SubscriptionEventLog>();
  let clock = 0;
  let url = '';

  const table = (resourceType: string) => {
    let entries = store.get(resourceType);
    if (!entries) {
      entries = new Map();
      store.set(resourceType, entries);
    }
    return entries;
  };

  const write = (resource: Resource, writeOptions: { lastUpdated?: string } = {}): Resource => {
    const id = resource.id ?? randomUUID();
    const previous = table(resource.resourceType).get(id);
    const version = previous ? Number(previous.current.meta?.versionId ?? 0) + 1 : 1;
    // Strictly increasing instants even within one millisecond, as real servers' clocks give.
    clock = Math.max(clock + 1, Date.now());
    const stored: Resource = {
      ...resource,
      id,
      meta: {
        ...(resource.meta ?? {}),
        versionId: String(version),
        lastUpdated: writeOptions.lastUpdated ?? new Date(clock).toISOString(),
      },
    };
    table(resource.resourceType).set(id, { current: stored, deleted: false });
    return stored;
  };

  const search = (resourceType: string, params: URLSearchParams): Resource[] => {
    const results = [...table(resourceType).values()]
      .filter((entry) => !entry.deleted && matches(entry.current, params))
      .map((entry) => entry.current);
    const sort = params.get('_sort');
    if (sort === '_lastUpdated' || sort === '-_lastUpdated') {
      results.sort((left, right) =>
        (left.meta?.lastUpdated ?? '').localeCompare(right.meta?.lastUpdated ?? ''),
      );
      if (sort.startsWith('-')) results.reverse();
    }
    return results;
  };

  const searchBundle = (resourceType: string, query: URLSearchParams) => {
    const count = Math.max(1, Number(query.get('_count') ?? 50));
    const offset = Math.max(0, Number(query.get('_offset') ?? 0));
    const filters = new URLSearchParams(
      [...query].filter(([name]) => name !== '_count' && name !== '_offset'),
    );
    const all = search(resourceType, filters);
    const page = all.slice(offset, offset + count);
    const link = [{ relation: 'self', url: `${url}/${resourceType}?${query}` }];
    if (offset + count < all.length) {
      const next = new URLSearchParams(query);
      next.set('_offset', String(offset + count));
      next.set('_count', String(count));
      link.push({ relation: 'next', url: `${url}/${resourceType}?${next}` });
    }
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      total: all.length,
      link,
      entry: page.map((resource) => ({
        fullUrl: `${url}/${resource.resourceType}/${resource.id}`,
        resource,
        search: { mode: 'match' },
      })),
    };
  };

  const subscriptionStatus = (
    id: string,
    type: 'query-status' | 'query-event',
    from?: number,
    to?: number,
  ) => {
    const log = subscriptions.get(id) ?? { status: 'active', events: [] };
    const events =
      type === 'query-event'
        ? log.events.filter(
            (event) => event.number >= (from ?? 1) && event.number <= (to ?? Number.MAX_SAFE_INTEGER),
          )
        : [];
    return {
      resourceType: 'Bundle',
      type: 'history',
      entry: [
        {
          fullUrl: `urn:uuid:${randomUUID()}`,
          resource: {
            resourceType: 'Parameters',
            parameter: [
              { name: 'subscription', valueReference: { reference: `${url}/Subscription/${id}` } },
              { name: 'status', valueCode: log.status },
              { name: 'type', valueCode: type },
              { name: 'events-since-subscription-start', valueString: String(log.events.length) },
              ...events.map((event) => ({
                name: 'notification-event',
                part: [
                  { name: 'event-number', valueString: String(event.number) },
                  { name: 'timestamp', valueInstant: event.timestamp },
                  { name: 'focus', valueReference: { reference: event.focus } },
                ],
              })),
            ],
          },
        },
      ],
    };
  };

  interface PlannedWrite {
    index: number;
    /** `existing`: a conditional create matched; nothing is written for it. */
    kind: 'create' | 'update' | 'existing';
    resource: Resource;
  }

  /** A transaction Bundle, all or nothing: every entry is checked and resolved before anything is written. */
  const transaction = (bundle: Resource): { status: number; body: unknown } => {
    if (bundle.resourceType !== 'Bundle' || bundle.type !== 'transaction')
      return { status: 400, body: outcome('invalid', 'POST [base] takes a transaction Bundle') };
    const entries = (bundle.entry as Record<string, unknown>[] | undefined) ?? [];
    if (entries.length === 0)
      return { status: 400, body: outcome('invalid', 'the transaction has no entries') };
    const resolved = new Map<string, string>();
    const planned: PlannedWrite[] = [];
    try {
      entries.forEach((entry, index) => {
        const entryRequest = entry.request as
          | { method?: string; url?: string; ifNoneExist?: string }
          | undefined;
        const resource = entry.resource as Resource | undefined;
        const [path, query] = (entryRequest?.url ?? '').replace(/^\/+/, '').split('?');
        const [type, id] = path.split('/');
        if (!resource || resource.resourceType !== type)
          throw new EntryFailure(
            400,
            'invalid',
            'the entry needs a resource of the type its url names',
            index,
          );
        let planning: PlannedWrite;
        if (entryRequest?.method === 'POST' && !id && !query) {
          const condition = entryRequest.ifNoneExist
            ? resolvePlaceholders(entryRequest.ifNoneExist, resolved, index)
            : undefined;
          const existing = condition ? search(type, new URLSearchParams(condition)) : [];
          if (existing.length > 1)
            throw new EntryFailure(412, 'duplicate', 'condition matched several', index);
          planning = existing[0]
            ? { index, kind: 'existing', resource: existing[0] }
            : { index, kind: 'create', resource: { ...resource, id: randomUUID() } };
        } else if (entryRequest?.method === 'PUT' && id && !query) {
          planning = { index, kind: 'update', resource: { ...resource, id } };
        } else {
          throw new EntryFailure(
            400,
            'not-supported',
            'only create and update by id in a transaction',
            index,
          );
        }
        if (typeof entry.fullUrl === 'string' && entry.fullUrl.startsWith('urn:uuid:'))
          resolved.set(entry.fullUrl.toLowerCase(), `${type}/${planning.resource.id}`);
        planned.push(planning);
      });
      for (const write of planned) {
        if (write.kind === 'existing') continue;
        write.resource = resolvePlaceholders(write.resource, resolved, write.index);
        const refusal = options.refuseWrite?.(write.resource, write.kind);
        if (refusal)
          throw new EntryFailure(
            refusal.status,
            refusal.code ?? 'forbidden',
            refusal.diagnostics,
            write.index,
          );
      }
    } catch (error) {
      if (error instanceof EntryFailure) return { status: error.status, body: error.body };
      throw error;
    }
    // Nothing above wrote anything, and nothing below can fail: the Bundle is applied whole.
    const responseEntries = planned.map((write) => {
      const stored = write.kind === 'existing' ? write.resource : commit(write.resource, write.kind);
      return {
        fullUrl: `${url}/${stored.resourceType}/${stored.id}`,
        resource: stored,
        response: {
          status: write.kind === 'create' ? '201 Created' : '200 OK',
          location: `${stored.resourceType}/${stored.id}/_history/${stored.meta?.versionId}`,
          etag: `W/"${stored.meta?.versionId}"`,
        },
      };
    });
    return {
      status: 200,
      body: { resourceType: 'Bundle', type: 'transaction-response', entry: responseEntries },
    };
  };

  const commit = (resource: Resource, kind: 'create' | 'update'): Resource => {
    const stored = write(resource);
    if (kind === 'create') created.set(resource.resourceType, (created.get(resource.resourceType) ?? 0) + 1);
    return stored;
  };

  const handle = async (request: IncomingMessage, response: ServerResponse) => {
    const requestUrl = new URL(request.url ?? '/', 'http://stand-in');
    const parts = requestUrl.pathname.split('/').filter(Boolean);
    const method = request.method ?? 'GET';
    requests.push(`${method} ${requestUrl.pathname}${requestUrl.search}`);
    if (options.latencyMs) await new Promise((resolve) => setTimeout(resolve, options.latencyMs));
    const [resourceType, id, operation] = parts;
    if (method === 'GET' && resourceType === 'metadata')
      return send(response, 200, {
        resourceType: 'CapabilityStatement',
        status: 'active',
        fhirVersion: '4.0.1',
        ...(options.software ? { software: options.software } : {}),
        ...(options.transactions === false
          ? {}
          : { rest: [{ mode: 'server', interaction: [{ code: 'transaction' }] }] }),
      });
    if (method === 'POST' && !resourceType) {
      if (options.transactions === false)
        return send(response, 405, outcome('not-supported', 'this server takes no transactions'));
      let bundle: Resource;
      try {
        bundle = JSON.parse(await readBody(request)) as Resource;
      } catch {
        return send(response, 400, outcome('structure', 'body is not JSON'));
      }
      const answer = transaction(bundle);
      return send(response, answer.status, answer.body);
    }
    if (!resourceType) return send(response, 404, outcome('not-found', 'no resource type'));

    if (resourceType === 'Subscription' && id && operation === '$status' && method === 'GET')
      return send(response, 200, subscriptionStatus(id, 'query-status'));
    if (resourceType === 'Subscription' && id && operation === '$events' && method === 'GET') {
      const from = Number(requestUrl.searchParams.get('eventsSinceNumber') ?? 1);
      const to = Number(requestUrl.searchParams.get('eventsUntilNumber') ?? Number.MAX_SAFE_INTEGER);
      return send(response, 200, subscriptionStatus(id, 'query-event', from, to));
    }

    if (method === 'GET' && id) {
      const entry = table(resourceType).get(id);
      if (!entry) return send(response, 404, outcome('not-found', `${resourceType}/${id} not found`));
      if (entry.deleted) return send(response, 410, outcome('deleted', `${resourceType}/${id} was deleted`));
      return send(response, 200, entry.current, { etag: `W/"${entry.current.meta?.versionId}"` });
    }
    if (method === 'GET') return send(response, 200, searchBundle(resourceType, requestUrl.searchParams));

    if (method === 'DELETE' && id) {
      const entry = table(resourceType).get(id);
      if (entry) entry.deleted = true;
      return send(response, 200, outcome('informational', 'deleted'));
    }

    const text = await readBody(request);
    let body: Resource;
    try {
      body = JSON.parse(text) as Resource;
    } catch {
      return send(response, 400, outcome('structure', 'body is not JSON'));
    }
    if (method === 'POST' && !id) {
      const condition = request.headers['if-none-exist'];
      if (typeof condition === 'string') {
        const existing = search(resourceType, new URLSearchParams(condition));
        if (existing.length > 1)
          return send(response, 412, outcome('duplicate', 'condition matched several'));
        if (existing.length === 1) return send(response, 200, existing[0]);
      }
      const refusal = options.refuseWrite?.({ ...body, resourceType }, 'create');
      if (refusal)
        return send(response, refusal.status, outcome(refusal.code ?? 'forbidden', refusal.diagnostics));
      const stored = commit({ ...body, resourceType, id: randomUUID() }, 'create');
      return send(response, 201, stored, { location: `${url}/${resourceType}/${stored.id}/_history/1` });
    }
    if (method === 'PUT' && id) {
      const refusal = options.refuseWrite?.({ ...body, resourceType, id }, 'update');
      if (refusal)
        return send(response, refusal.status, outcome(refusal.code ?? 'forbidden', refusal.diagnostics));
      const stored = write({ ...body, resourceType, id });
      return send(response, 200, stored);
    }
    return send(response, 405, outcome('not-supported', `${method} not supported`));
  };

  const server: Server = createServer((request, response) => {
    // Requests arrive as /fhir/Type/...: strip the base path once, here.
    request.url = (request.url ?? '/').replace(/^\/fhir/, '') || '/';
    handle(request, response).catch((error: unknown) =>
      send(response, 500, outcome('exception', String(error))),
    );
  });
  await new Promise<void>((resolve) => server.listen(options.port ?? 0, '127.0.0.1', resolve));
  url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;

  return {
    url,
    write,
    remove(resourceType, id) {
      const entry = table(resourceType).get(id);
      if (entry) entry.deleted = true;
    },
    get(resourceType, id) {
      const entry = table(resourceType).get(id);
      if (!entry) throw new Error(`${resourceType}/${id} is not in the stand-in`);
      return entry.current;
    },
    all: (resourceType) =>
      [...table(resourceType).values()].filter((entry) => !entry.deleted).map((entry) => entry.current),
    created,
    requests,
    subscriptions,
    recordEvent(subscriptionId, focus) {
      let log = subscriptions.get(subscriptionId);
      if (!log) {
        log = { status: 'active', events: [] };
        subscriptions.set(subscriptionId, log);
      }
      const number = log.events.length + 1;
      log.events.push({ number, focus, timestamp: new Date().toISOString() });
      return number;
    },
    close: () =>
      new Promise<void>((resolve) => {
        server.closeAllConnections();
        server.close(() => resolve());
      }),
  };
}

/** A patient and a finished encounter for it: the smallest record the pipeline drafts from. */
/**
 * A half-hour visit that ended yesterday: recent enough for drafts.maxAgeDays (14 by default), so the
 * service drafts the seeded encounters whatever day the tests run on.
 */
export function recentVisitPeriod(now = Date.now()): { start: string; end: string } {
  const start = new Date(now - 24 * 60 * 60 * 1000);
  return { start: start.toISOString(), end: new Date(start.getTime() + 30 * 60 * 1000).toISOString() };
}

export function seedEncounters(standIn: FhirStandIn, count: number, status = 'finished'): string[] {
  const patient = standIn.write({
    resourceType: 'Patient',
    id: 'stand-in-patient',
    name: [{ family: 'Synthetic', given: ['Test'] }],
    gender: 'female',
    birthDate: '1970-01-01',
  });
  standIn.write({
    resourceType: 'Condition',
    id: 'stand-in-condition',
    subject: { reference: `Patient/${patient.id}` },
    clinicalStatus: {
      coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }],
    },
    code: { text: 'Type 2 diabetes mellitus' },
  });
  const ids: string[] = [];
  for (let index = 0; index < count; index++) {
    const encounter = standIn.write({
      resourceType: 'Encounter',
      id: `enc-${index}`,
      status,
      class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
      subject: { reference: `Patient/${patient.id}` },
      period: recentVisitPeriod(),
    });
    ids.push(encounter.id as string);
  }
  return ids;
}
