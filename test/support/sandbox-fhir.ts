import { type ChildProcess, spawn } from 'node:child_process';
import path from 'node:path';
import type { Bundle, DocumentReference, Provenance } from 'fhir/r4.js';
import { repoRoot } from './shared-fixtures.ts';

/** Starts test/support/sandbox-fhir-process.ts and reads back what was written, over HTTP. */
export interface SandboxFhirProcess {
  url: string;
  child: ChildProcess;
  encounterIds: string[];
  /** Drafts (our DocumentReferences) per encounter id. */
  drafts(identifierSystem: string): Promise<Map<string, number>>;
  provenanceTargets(): Promise<string[]>;
  close(): Promise<void>;
}

async function searchAll<T>(url: string): Promise<T[]> {
  const results: T[] = [];
  let next: string | undefined = url;
  while (next) {
    const page = (await (
      await fetch(next, { headers: { accept: 'application/fhir+json' } })
    ).json()) as Bundle;
    for (const entry of page.entry ?? []) if (entry.resource) results.push(entry.resource as T);
    next = page.link?.find((link) => link.relation === 'next')?.url;
  }
  return results;
}

export async function startSandboxFhirProcess(encounters: number): Promise<SandboxFhirProcess> {
  const child = spawn(
    process.execPath,
    [path.join(repoRoot, 'test/support/sandbox-fhir-process.ts'), String(encounters)],
    {
      stdio: ['ignore', 'pipe', 'inherit'],
    },
  );
  const url = await new Promise<string>((resolve, reject) => {
    let buffered = '';
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      if (buffered.includes('\n')) resolve(buffered.split('\n')[0].trim());
    });
    child.once('exit', (code) => reject(new Error(`sandbox FHIR process exited with ${code}`)));
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  return {
    url,
    child,
    encounterIds: Array.from({ length: encounters }, (_, index) => `enc-${index}`),
    async drafts(identifierSystem) {
      const documents = await searchAll<DocumentReference>(`${url}/DocumentReference?_count=500`);
      const counts = new Map<string, number>();
      for (const document of documents) {
        if (!document.identifier?.some((identifier) => identifier.system === identifierSystem)) continue;
        const encounter = document.context?.encounter?.[0]?.reference?.split('/').pop();
        if (encounter) counts.set(encounter, (counts.get(encounter) ?? 0) + 1);
      }
      return counts;
    },
    async provenanceTargets() {
      const provenances = await searchAll<Provenance>(`${url}/Provenance?_count=500`);
      return provenances.map((provenance) => provenance.target[0]?.reference ?? '');
    },
    async close() {
      child.kill('SIGTERM');
      await exited;
    },
  };
}
