import type { CreateResourceOptions } from '@medplum/fhir-router';
import { MemoryRepository } from '@medplum/fhir-router';
import type { Bundle, OperationOutcome, Resource } from '@medplum/fhirtypes';

type SearchRequestLike = Parameters<MemoryRepository['conditionalCreate']>[1];

export interface ResourceWrite {
  interaction: 'create' | 'update';
  /** The version before this write; undefined for a create. */
  previous: Resource | undefined;
  current: Resource;
}

/**
 * Medplum's in-memory repository, observed: every create or update (through the REST API, a
 * transaction, a conditional create or direct calls) is reported with the version it replaced, which
 * is what subscriptions need to tell a status change from any other edit. It also remembers deletes
 * (so reads answer 410 Gone) and keeps `_history` newest-first (the base class reverses its stored
 * list in place on every read).
 */
export class ObservedRepository extends MemoryRepository {
  private readonly listeners: ((write: ResourceWrite) => void)[] = [];
  private readonly versionOrder = new Map<string, string[]>();
  private readonly deletedKeys = new Set<string>();

  onWrite(listener: (write: ResourceWrite) => void): void {
    this.listeners.push(listener);
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
    const previous =
      update && resource.id
        ? await this.readResource(resource.resourceType, resource.id).catch(() => undefined)
        : undefined;
    const stored = await super.createResource(resource, options, update);
    this.remember(stored);
    this.emit({ interaction: previous ? 'update' : 'create', previous, current: stored });
    return stored;
  }

  override async conditionalCreate<T extends Resource>(
    resource: T,
    search: SearchRequestLike,
    options?: CreateResourceOptions,
  ): Promise<{ resource: T & { id: string }; outcome: OperationOutcome }> {
    const result = await super.conditionalCreate(resource, search as never, options);
    if (result.outcome.id === 'created') {
      this.remember(result.resource);
      this.emit({ interaction: 'create', previous: undefined, current: result.resource });
    }
    return result as { resource: T & { id: string }; outcome: OperationOutcome };
  }

  override async deleteResource(
    resourceType: string,
    id: string,
    options?: { ifMatch?: string },
  ): Promise<void> {
    await super.deleteResource(resourceType, id, options);
    this.deletedKeys.add(`${resourceType}/${id}`);
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
  }

  private remember(stored: Resource): void {
    const key = `${stored.resourceType}/${stored.id}`;
    this.deletedKeys.delete(key);
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
