import {
  allOk,
  badRequest,
  created,
  evalFhirPath,
  getSearchParameter,
  matchesSearchRequest,
  multipleMatches,
  OperationOutcomeError,
  Operator,
  type SearchRequest,
} from '@medplum/core';
import type { CreateResourceOptions } from '@medplum/fhir-router';
import { MemoryRepository } from '@medplum/fhir-router';
import type { Bundle, OperationOutcome, Resource } from '@medplum/fhirtypes';
import { PatientIndex } from './patient-index.ts';

type SearchRequestLike = Parameters<MemoryRepository['conditionalCreate']>[1];

/**
 * Identifier values may contain `|` (the service's draft identifier is `<encounter>|<kind>|<version>`).
 * Servers such as HAPI read `identifier=system|a|b` as system `system` and value `a|b` (and accept
 * `\|` escapes); Medplum's memory search cuts the value at the second pipe and finds nothing, which
 * would make conditional creates create duplicates. Such filters are matched here instead.
 */
function needsOwnIdentifierMatch(filter: { code: string; value: string }): boolean {
  return filter.code === 'identifier' && (filter.value.split('|').length > 2 || filter.value.includes('\\|'));
}

function splitUnescaped(text: string, separator: string): string[] {
  const parts: string[] = [];
  let current = '';
  for (let index = 0; index < text.length; index++) {
    if (text[index] === '\\' && text[index + 1] === separator) {
      current += `\\${separator}`;
      index++;
    } else if (text[index] === separator) {
      parts.push(current);
      current = '';
    } else current += text[index];
  }
  parts.push(current);
  return parts;
}

function identifierMatches(resource: Resource, token: string): boolean {
  const identifiers = (resource as { identifier?: { system?: string; value?: string }[] }).identifier ?? [];
  return splitUnescaped(token, ',').some((alternative) => {
    const [first, ...rest] = splitUnescaped(alternative, '|');
    const unescaped = (text: string) => text.replace(/\\([|,$\\])/g, '$1');
    const hasSystem = rest.length > 0;
    const system = hasSystem ? unescaped(first) : undefined;
    const value = unescaped(hasSystem ? rest.join('|') : first);
    return identifiers.some(
      (identifier) =>
        identifier.value === value &&
        (!hasSystem || (system === '' ? !identifier.system : identifier.system === system)),
    );
  });
}

export interface ResourceWrite {
  interaction: 'create' | 'update';
  /** The version before this write; undefined for a create. */
  previous: Resource | undefined;
  current: Resource;
  /** Made by the server itself (`updateAsServer`), not by a client: write guards did not run. */
  byServer: boolean;
}

/** What a write guard lets through: the resource to store, and work to do once it is stored. */
export interface GuardedWrite {
  resource: Resource;
  afterWrite?: (stored: Resource) => void;
}

/**
 * Runs before a client's create or update is stored. It may refuse the write (throw an
 * OperationOutcomeError) or store a changed copy, e.g. without write-only elements; undefined lets the
 * resource through unchanged.
 */
export type WriteGuard = (resource: Resource, previous: Resource | undefined) => GuardedWrite | undefined;

/** One client write inside an open transaction, with what it replaced, so the transaction can be undone. */
interface JournalEntry {
  resourceType: string;
  id: string;
  /** The stored current version before the write; undefined when the write created the resource. */
  previous: Resource | undefined;
  wasDeleted: boolean;
  /** The version the write added (none for a delete). */
  versionId: string | undefined;
}

/** The base class's storage, which it keeps private; a rollback has to put it back as it was. */
interface MemoryStorage {
  resources: Map<string, Map<string, Resource>>;
  history: Map<string, Map<string, Resource[]>>;
}

/**
 * Medplum's in-memory repository, observed: every create or update (through the REST API, a
 * transaction, a conditional create or direct calls) is reported with the version it replaced, which
 * is what subscriptions need to tell a status change from any other edit. It also remembers deletes
 * (so reads answer 410 Gone) and keeps `_history` newest-first (the base class reverses its stored
 * list in place on every read).
 */
export class ObservedRepository extends MemoryRepository {
  /** Client writes of the transaction now open, and what waits for its commit (listeners, after-write work). */
  private journal: { entries: JournalEntry[]; onCommit: (() => void)[] } | undefined;
  private readonly listeners: ((write: ResourceWrite) => void)[] = [];
  private readonly guards: WriteGuard[] = [];
  private readonly versionOrder = new Map<string, string[]>();
  private readonly deletedKeys = new Set<string>();
  private readonly patientIndex = new PatientIndex();

  onWrite(listener: (write: ResourceWrite) => void): void {
    this.listeners.push(listener);
  }

  /** Guards every client write (REST, transactions, conditional creates, patches); see WriteGuard. */
  guardWrites(guard: WriteGuard): void {
    this.guards.push(guard);
  }

  /**
   * An update the server makes on its own account (a subscription's status), past the write guards
   * that police clients. With `expectedVersionId`, nothing is written (undefined is returned) when
   * the resource changed since that version was read, so a client's newer write is never undone.
   */
  async updateAsServer<T extends Resource>(resource: T, expectedVersionId?: string): Promise<T | undefined> {
    return this.write(resource, undefined, true, true, expectedVersionId);
  }

  isDeleted(resourceType: string, id: string): boolean {
    return this.deletedKeys.has(`${resourceType}/${id}`);
  }

  /** Stores a resource as given (id and all) without telling listeners: for seeding and bulk loads. */
  async seedResource<T extends Resource>(resource: T): Promise<T> {
    const stored = await super.createResource(resource, undefined, true);
    this.remember(stored);
    return stored;
  }

  override async createResource<T extends Resource>(
    resource: T,
    options?: CreateResourceOptions,
    update = false,
  ): Promise<T & { id: string }> {
    return (await this.write(resource, options, update, false)) as T & { id: string };
  }

  private async write<T extends Resource>(
    resource: T,
    options: CreateResourceOptions | undefined,
    update: boolean,
    byServer: boolean,
    expectedVersionId?: string,
  ): Promise<(T & { id: string }) | undefined> {
    const previous =
      update && resource.id
        ? await this.readResource(resource.resourceType, resource.id).catch(() => undefined)
        : undefined;
    if (expectedVersionId !== undefined && previous?.meta?.versionId !== expectedVersionId) return undefined;
    let toStore: Resource = resource;
    const afterWrites: ((stored: Resource) => void)[] = [];
    if (!byServer) {
      for (const guard of this.guards) {
        const guarded = guard(toStore, previous);
        if (!guarded) continue;
        toStore = guarded.resource;
        if (guarded.afterWrite) afterWrites.push(guarded.afterWrite);
      }
    }
    const journal = byServer ? undefined : this.journal;
    const before = journal && toStore.id ? this.storedCurrent(toStore.resourceType, toStore.id) : undefined;
    const wasDeleted = Boolean(toStore.id && this.deletedKeys.has(`${toStore.resourceType}/${toStore.id}`));
    // No await between the version check above and this store: nothing can slip in between.
    const stored = (await super.createResource(toStore, options, update)) as T & { id: string };
    this.remember(stored);
    const announce = () => {
      for (const afterWrite of afterWrites) afterWrite(stored);
      this.emit({ interaction: previous ? 'update' : 'create', previous, current: stored, byServer });
    };
    if (!journal) {
      announce();
      return stored;
    }
    // Inside a transaction nobody hears of the write until it commits: a rolled-back write notifies nobody.
    journal.entries.push({
      resourceType: stored.resourceType,
      id: stored.id,
      previous: before,
      wasDeleted,
      versionId: stored.meta?.versionId,
    });
    journal.onCommit.push(announce);
    return stored;
  }

  /**
   * Transaction Bundles (and conditional updates) are all or nothing, as on a server with a database:
   * when any entry fails, every client write the transaction made is undone and nobody is told of any.
   * The base class just runs the callback. Writes are not isolated from concurrent callers here; the
   * sandbox runs its REST writes one at a time (see sandbox-ehr.ts), which makes that hold.
   */
  override async withTransaction<TResult>(
    callback: (repository: this) => Promise<TResult>,
  ): Promise<TResult> {
    if (this.journal) return callback(this);
    const journal: NonNullable<ObservedRepository['journal']> = { entries: [], onCommit: [] };
    this.journal = journal;
    let result: TResult;
    try {
      result = await callback(this);
    } catch (error) {
      this.journal = undefined;
      this.rollBack(journal.entries);
      throw error;
    }
    this.journal = undefined;
    for (const announce of journal.onCommit) announce();
    return result;
  }

  private get storage(): MemoryStorage {
    return this as unknown as MemoryStorage;
  }

  private storedCurrent(resourceType: string, id: string): Resource | undefined {
    return this.storage.resources.get(resourceType)?.get(id);
  }

  private rollBack(entries: JournalEntry[]): void {
    const { resources, history } = this.storage;
    for (const entry of [...entries].reverse()) {
      const key = `${entry.resourceType}/${entry.id}`;
      let current = resources.get(entry.resourceType);
      if (!current) {
        current = new Map();
        resources.set(entry.resourceType, current);
      }
      if (entry.previous) current.set(entry.id, entry.previous);
      else current.delete(entry.id);
      if (entry.versionId) {
        const versions = history.get(entry.resourceType)?.get(entry.id);
        // In place: the base class hands out and reverses this very array.
        const kept = (versions ?? []).filter((version) => version.meta?.versionId !== entry.versionId);
        if (versions) versions.splice(0, versions.length, ...kept);
        if (kept.length === 0) history.get(entry.resourceType)?.delete(entry.id);
        const order = (this.versionOrder.get(key) ?? []).filter((versionId) => versionId !== entry.versionId);
        if (order.length > 0) this.versionOrder.set(key, order);
        else this.versionOrder.delete(key);
      }
      if (entry.wasDeleted) this.deletedKeys.add(key);
      else this.deletedKeys.delete(key);
      if (entry.previous && !entry.wasDeleted) this.patientIndex.add(entry.previous);
      else this.patientIndex.remove(entry.resourceType, entry.id);
    }
  }

  override async search<T extends Resource>(
    searchRequest: SearchRequest<T>,
  ): Promise<Bundle<T & { id: string }>> {
    const patientScoped = await this.patientScopedSearch(searchRequest);
    if (patientScoped) return patientScoped as Bundle<T & { id: string }>;
    const own = searchRequest.filters?.filter(needsOwnIdentifierMatch) ?? [];
    if (own.length === 0) return super.search(searchRequest);
    const { offset = 0, count } = searchRequest;
    const all = await super.search({
      ...searchRequest,
      filters: searchRequest.filters?.filter((filter) => !needsOwnIdentifierMatch(filter)),
      offset: undefined,
      count: undefined,
    });
    const matching = (all.entry ?? []).filter((entry) =>
      own.every((filter) => entry.resource && identifierMatches(entry.resource, filter.value)),
    );
    const page = matching.slice(offset, count === undefined ? undefined : offset + count);
    return { ...all, entry: page.length ? page : undefined, total: matching.length };
  }

  /**
   * `?patient=Patient/x` answered from the patient index: the same filters (Medplum's own matcher),
   * sort and paging as the memory search, over that patient's resources only. Anything the index
   * cannot answer exactly (chains, includes, several patients, modifiers) goes to the full scan.
   */
  private async patientScopedSearch(searchRequest: SearchRequest): Promise<Bundle | undefined> {
    const filters = searchRequest.filters ?? [];
    const patientFilters = filters.filter((filter) => filter.code === 'patient');
    if (patientFilters.length !== 1 || searchRequest.include || searchRequest.revInclude) return undefined;
    const [patientFilter] = patientFilters;
    if (patientFilter.operator !== Operator.EQUALS || !/^Patient\/[^,]+$/.test(patientFilter.value))
      return undefined;
    if (filters.some((filter) => filter.code.includes('.') || filter.code.startsWith('_has')))
      return undefined;
    if (!this.patientIndex.covers(searchRequest.resourceType)) return undefined;
    const rest = filters.filter((filter) => filter !== patientFilter && !needsOwnIdentifierMatch(filter));
    const own = filters.filter(needsOwnIdentifierMatch);
    const restRequest: SearchRequest = { resourceType: searchRequest.resourceType, filters: rest };
    const matching: Resource[] = [];
    for (const id of this.patientIndex.ids(patientFilter.value, searchRequest.resourceType)) {
      const resource = await this.readResource(searchRequest.resourceType, id).catch(() => undefined);
      if (!resource) continue;
      if (rest.length > 0 && !matchesSearchRequest(resource, restRequest)) continue;
      if (!own.every((filter) => identifierMatches(resource, filter.value))) continue;
      matching.push(resource);
    }
    let entries = matching.map((resource) => ({ search: { mode: 'match' as const }, resource }));
    // Successive stable sorts, as the memory search does them.
    for (const rule of searchRequest.sortRules ?? []) {
      const expression = getSearchParameter(searchRequest.resourceType, rule.code)?.expression;
      if (!expression) continue;
      const keys = new Map(
        entries.map((entry) => [entry, JSON.stringify(evalFhirPath(expression, entry.resource))]),
      );
      entries = entries.sort(
        (left, right) =>
          (keys.get(left) as string).localeCompare(keys.get(right) as string) * (rule.descending ? -1 : 1),
      );
    }
    const offset = searchRequest.offset ?? 0;
    const page = entries.slice(
      offset,
      searchRequest.count === undefined ? undefined : offset + searchRequest.count,
    );
    return {
      resourceType: 'Bundle',
      type: 'searchset',
      entry: page.length ? page : undefined,
      total: matching.length,
    };
  }

  /**
   * Medplum's memory repository creates a conditional create's resource without going through
   * `createResource`, so neither the write guards nor the listeners would see it: the search and the
   * create are done here instead, with the same checks as the base class.
   */
  override async conditionalCreate<T extends Resource>(
    resource: T,
    search: SearchRequestLike,
    options?: CreateResourceOptions,
  ): Promise<{ resource: T & { id: string }; outcome: OperationOutcome }> {
    if (search.resourceType !== resource.resourceType)
      throw new OperationOutcomeError(
        badRequest('Search type must match resource type for conditional create'),
      );
    const found = await this.search({ ...search, count: 2, sortRules: undefined } as SearchRequest<T>);
    if ((found.entry?.length ?? 0) > 1) throw new OperationOutcomeError(multipleMatches);
    const existing = found.entry?.[0]?.resource;
    if (existing) {
      if (!options?.assignedId && resource.id && resource.id !== existing.id)
        throw new OperationOutcomeError(
          badRequest('Resource ID did not match resolved ID', `${resource.resourceType}.id`),
        );
      return { resource: existing, outcome: allOk };
    }
    return { resource: await this.createResource(resource, options), outcome: created };
  }

  override async deleteResource(
    resourceType: string,
    id: string,
    options?: { ifMatch?: string },
  ): Promise<void> {
    const before = this.storedCurrent(resourceType, id);
    const wasDeleted = this.deletedKeys.has(`${resourceType}/${id}`);
    await super.deleteResource(resourceType, id, options);
    this.deletedKeys.add(`${resourceType}/${id}`);
    this.patientIndex.remove(resourceType, id);
    this.journal?.entries.push({ resourceType, id, previous: before, wasDeleted, versionId: undefined });
  }

  override async readHistory<T extends Resource>(resourceType: string, id: string): Promise<Bundle<T>> {
    const bundle = await super.readHistory<T>(resourceType, id);
    const order = this.versionOrder.get(`${resourceType}/${id}`) ?? [];
    const position = (entry: { resource?: Resource }) => order.indexOf(entry.resource?.meta?.versionId ?? '');
    bundle.entry?.sort((left, right) => position(right) - position(left));
    return bundle;
  }

  override clear(): void {
    super.clear();
    this.versionOrder.clear();
    this.deletedKeys.clear();
    this.patientIndex.clear();
  }

  private remember(stored: Resource): void {
    const key = `${stored.resourceType}/${stored.id}`;
    this.deletedKeys.delete(key);
    this.patientIndex.add(stored);
    const versionId = stored.meta?.versionId;
    if (!versionId) return;
    const versions = this.versionOrder.get(key);
    if (versions) versions.push(versionId);
    else this.versionOrder.set(key, [versionId]);
  }

  private emit(write: ResourceWrite): void {
    for (const listener of this.listeners) listener(write);
  }
}
