import { readdir, readFile } from 'node:fs/promises';
import path from 'node:path';
import type { Bundle, FhirResource } from 'fhir/r4.js';
import { z } from 'zod';
import { isOperationOutcome, outcomeDiagnostics } from '../../fhir/operation-outcome.ts';

/**
 * Loads a folder of FHIR NDJSON (a bulk export, such as Synthea's) into the sandbox or any FHIR
 * server, ids kept as given: in process (tests), or over FHIR as batch Bundles of updates
 * (`npm run sandbox -- load <folder>`). Bulk exports reference practitioners, organizations and
 * locations conditionally (`Practitioner?identifier=system|value`), which a read cannot follow: those
 * references are resolved to the loaded resource's id, and ones that match nothing are dropped
 * (keeping `display`).
 */
const resourceLine = z.looseObject({
  resourceType: z.string().regex(/^[A-Z][A-Za-z]+$/),
  id: z.string().regex(/^[A-Za-z0-9\-.]{1,64}$/),
});

export interface NdjsonLoadResult {
  resourceCounts: Record<string, number>;
  resolvedReferences: number;
  droppedReferences: number;
  patientIds: string[];
}

export async function readNdjsonFolder(folder: string): Promise<FhirResource[]> {
  const files = (await readdir(folder)).filter((name) => name.endsWith('.ndjson')).sort();
  const resources: FhirResource[] = [];
  for (const file of files) {
    const text = await readFile(path.join(folder, file), 'utf8');
    const lines = text.split(/\r?\n/);
    lines.forEach((line, index) => {
      if (!line.trim()) return;
      let json: unknown;
      try {
        json = JSON.parse(line);
      } catch {
        throw new Error(`${file}:${index + 1}: not valid JSON`);
      }
      const parsed = resourceLine.safeParse(json);
      if (!parsed.success) throw new Error(`${file}:${index + 1}: not a FHIR resource with a valid id`);
      resources.push(parsed.data as unknown as FhirResource);
    });
  }
  return resources;
}

const conditionalReference = /^([A-Z][A-Za-z]+)\?identifier=(.+)$/;

/** Rewrites conditional references in place; returns how many were resolved and dropped. */
function resolveConditionalReferences(resources: FhirResource[]): {
  resolved: number;
  dropped: number;
} {
  const byIdentifier = new Map<string, string>();
  for (const resource of resources) {
    const identifiers = (resource as { identifier?: { system?: string; value?: string }[] }).identifier ?? [];
    for (const identifier of identifiers) {
      if (identifier.value === undefined) continue;
      byIdentifier.set(
        `${resource.resourceType}?${identifier.system ?? ''}|${identifier.value}`,
        resource.id!,
      );
      if (!identifier.system) byIdentifier.set(`${resource.resourceType}?${identifier.value}`, resource.id!);
    }
  }
  let resolved = 0;
  let dropped = 0;
  const visit = (value: unknown): unknown => {
    if (Array.isArray(value)) return value.map(visit).filter((item) => item !== undefined);
    if (typeof value !== 'object' || value === null) return value;
    const record = value as Record<string, unknown>;
    let removed = false;
    for (const [key, child] of Object.entries(record)) {
      const next = visit(child);
      if (next === undefined) {
        delete record[key];
        removed = true;
      } else record[key] = next;
    }
    // An element left empty by a dropped reference goes too: FHIR elements may not be empty.
    if (removed && Object.keys(record).length === 0) return undefined;
    const reference = record.reference;
    if (typeof reference !== 'string') return record;
    const match = conditionalReference.exec(reference);
    if (!match) return record;
    const target = byIdentifier.get(`${match[1]}?${decodeURIComponent(match[2])}`);
    if (target) {
      record.reference = `${match[1]}/${target}`;
      resolved++;
      return record;
    }
    dropped++;
    delete record.reference;
    return Object.keys(record).length > 0 ? record : undefined;
  };
  for (const resource of resources) visit(resource);
  return { resolved, dropped };
}

/** Where loaded resources go: the in-process sandbox, or a FHIR server (`fhirBatchWriter`). */
interface ResourceSink {
  seed(resources: readonly FhirResource[]): Promise<void>;
}

/** Types others point at go first, so a server that checks references on write finds their targets. */
const writeOrder = [
  'Organization',
  'Location',
  'Practitioner',
  'PractitionerRole',
  'Patient',
  'Device',
  'Encounter',
];

function writeRank(resource: FhirResource): number {
  const rank = writeOrder.indexOf(resource.resourceType);
  return rank < 0 ? writeOrder.length : rank;
}

/**
 * A FHIR server as a sink: batch Bundles of `PUT Type/id` (ids kept as given, so a second load
 * updates instead of duplicating). Every entry's status is checked; refused entries are counted and
 * the first few named, and the load fails once the whole folder has been tried.
 */
export function fhirBatchWriter(options: {
  baseUrl: string;
  /** Bearer token for the server, if it wants one. */
  accessToken?: () => Promise<string | undefined>;
  batchSize?: number;
  timeoutMs?: number;
}): ResourceSink {
  const batchSize = options.batchSize ?? 200;
  const baseUrl = options.baseUrl.replace(/\/+$/, '');
  return {
    async seed(resources) {
      const ordered = [...resources].sort((left, right) => writeRank(left) - writeRank(right));
      const refused: string[] = [];
      for (let start = 0; start < ordered.length; start += batchSize) {
        const chunk = ordered.slice(start, start + batchSize);
        const bundle: Bundle = {
          resourceType: 'Bundle',
          type: 'batch',
          entry: chunk.map((resource) => ({
            resource,
            request: { method: 'PUT', url: `${resource.resourceType}/${resource.id}` },
          })),
        };
        const token = await options.accessToken?.();
        const response = await fetch(baseUrl, {
          method: 'POST',
          headers: {
            'content-type': 'application/fhir+json',
            accept: 'application/fhir+json',
            prefer: 'return=minimal',
            ...(token ? { authorization: `Bearer ${token}` } : {}),
          },
          body: JSON.stringify(bundle),
          signal: AbortSignal.timeout(options.timeoutMs ?? 120_000),
        });
        const answer = (await response.json().catch(() => undefined)) as Bundle | undefined;
        if (!response.ok || answer?.resourceType !== 'Bundle') {
          const diagnostics = isOperationOutcome(answer) ? outcomeDiagnostics(answer) : undefined;
          throw new Error(
            `${baseUrl} answered the batch with ${response.status}${diagnostics ? `: ${diagnostics}` : ''}`,
          );
        }
        chunk.forEach((resource, index) => {
          const entryResponse = answer.entry?.[index]?.response;
          const status = Number.parseInt(entryResponse?.status ?? '', 10);
          if (status >= 200 && status < 300) return;
          const diagnostics = isOperationOutcome(entryResponse?.outcome)
            ? outcomeDiagnostics(entryResponse.outcome)
            : undefined;
          refused.push(
            `${resource.resourceType}/${resource.id}: ${entryResponse?.status ?? 'no answer'}${diagnostics ? ` ${diagnostics}` : ''}`,
          );
        });
      }
      if (refused.length) {
        throw new Error(
          `${refused.length} of ${resources.length} resources were refused, for example ${refused.slice(0, 3).join('; ')}`,
        );
      }
    },
  };
}

export async function loadNdjsonFolder(sandbox: ResourceSink, folder: string): Promise<NdjsonLoadResult> {
  const resources = await readNdjsonFolder(folder);
  const { resolved, dropped } = resolveConditionalReferences(resources);
  await sandbox.seed(resources);
  const resourceCounts: Record<string, number> = {};
  for (const resource of resources)
    resourceCounts[resource.resourceType] = (resourceCounts[resource.resourceType] ?? 0) + 1;
  return {
    resourceCounts,
    resolvedReferences: resolved,
    droppedReferences: dropped,
    patientIds: resources
      .filter((resource) => resource.resourceType === 'Patient')
      .map((resource) => resource.id!),
  };
}
