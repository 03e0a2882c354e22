import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';

/**
 * A small in-memory FHIR R4 server for intake tests: read, vread-free versioning, search with the
 * parameters the service uses (patient/subject, identifier, target, _lastUpdated, _sort, _count with
 * paging), conditional create (If-None-Exist), update, delete (410 afterwards), and the Backport
 * operations $status and $events. Tests can write resources with a chosen lastUpdated (a late commit)
 * and read counters of what was created.
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

export interface FhirStandInOptions {
  /** Delay added to every answer, so work stays in flight long enough to be interrupted. */
  latencyMs?: number;
  port?: number;
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

const outcome = (code: string, diagnostics: string) => ({
  resourceType: 'OperationOutcome',
  issue: [{ severity: 'error', code, diagnostics }],
});

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
      });
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
      const stored = write({ ...body, resourceType, id: undefined });
      created.set(resourceType, (created.get(resourceType) ?? 0) + 1);
      return send(response, 201, stored, { location: `${url}/${resourceType}/${stored.id}/_history/1` });
    }
    if (method === 'PUT' && id) {
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
      period: { start: '2026-11-01T09:00:00Z', end: '2026-11-01T09:30:00Z' },
    });
    ids.push(encounter.id as string);
  }
  return ids;
}
