import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { DocumentReference, Encounter, Patient } from 'fhir/r4.js';
import type { DraftKind } from '../../agents/draft-engine.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import type { SandboxEhr } from '../sandbox/sandbox-ehr.ts';
import type { PlantedTruth } from './labelled-set.ts';

/**
 * Where the evaluated records come from. Every source ends as a FHIR server the run reads over HTTP
 * with the service's own client and retrieval: the embedded sandbox (its synthetic patients, with
 * statements planted in notes), an NDJSON folder such as Synthea's output (loaded into an embedded
 * sandbox), or any FHIR base. Only the sandbox knows planted truths.
 */
export type SourceOption =
  | { kind: 'sandbox'; patients: number; seed: number }
  | { kind: 'ndjson'; folder: string; patients: number }
  | { kind: 'fhir-base'; url: string; patients: number };

export interface DraftCaseReference {
  patientId: string;
  encounterId: string;
  kind: DraftKind;
}

export interface EvalSource {
  /** For the report: what was read (no patient data). */
  description: string;
  fhir: FhirClient;
  cases: DraftCaseReference[];
  /** Planted statements per patient id (sandbox only). */
  planted: Map<string, PlantedTruth[]>;
  close(): Promise<void>;
}

/** The sandbox EHR in this process, over real HTTP on loopback (trusted like the service's own sandbox). */
export async function startEmbeddedSandbox(seedResources: (sandbox: SandboxEhr) => Promise<void>) {
  const [{ default: express }, { createSandboxEhr }, { sandboxRouter }] = await Promise.all([
    import('express'),
    import('../sandbox/sandbox-ehr.ts'),
    import('../http/sandbox-routes.ts'),
  ]);
  const sandbox = createSandboxEhr();
  await seedResources(sandbox);
  const app = express();
  app.use('/sandbox/fhir', sandboxRouter(sandbox));
  const server = await new Promise<Server>((resolve) => {
    const listening = app.listen(0, '127.0.0.1', () => resolve(listening));
  });
  const baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/sandbox/fhir`;
  sandbox.setBaseUrl(baseUrl);
  return {
    baseUrl,
    async close() {
      await sandbox.close();
      server.closeAllConnections();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

function start(encounter: Encounter): string {
  return encounter.period?.start ?? encounter.period?.end ?? '';
}

/**
 * The draft cases of one patient: a progress summary of the latest finished encounter that has a note
 * (else the latest finished one), and a pre-visit briefing of the next planned encounter, when there is one.
 */
async function casesOf(fhir: FhirClient, patientId: string): Promise<DraftCaseReference[]> {
  const patient = `Patient/${patientId}`;
  const [encounters, notes] = await Promise.all([
    fhir.search<Encounter>('Encounter', { patient, _count: 200 }),
    fhir.search<DocumentReference>('DocumentReference', { patient, _count: 200, _elements: 'context' }),
  ]);
  const noted = new Set(
    notes.flatMap((note) => (note.context?.encounter ?? []).map((reference) => reference.reference)),
  );
  const finished = encounters
    .filter((encounter) => encounter.status === 'finished')
    .sort((left, right) => start(right).localeCompare(start(left)));
  const summarised = finished.find((encounter) => noted.has(`Encounter/${encounter.id}`)) ?? finished[0];
  const planned = encounters
    .filter((encounter) => encounter.status === 'planned')
    .sort((left, right) => start(left).localeCompare(start(right)))[0];
  return [
    ...(summarised?.id ? [{ patientId, encounterId: summarised.id, kind: 'progress-summary' as const }] : []),
    ...(planned?.id ? [{ patientId, encounterId: planned.id, kind: 'previsit-briefing' as const }] : []),
  ];
}

async function casesFor(fhir: FhirClient, patientIds: string[]): Promise<DraftCaseReference[]> {
  const cases: DraftCaseReference[] = [];
  for (const patientId of patientIds) cases.push(...(await casesOf(fhir, patientId)));
  return cases;
}

export async function openSource(option: SourceOption): Promise<EvalSource> {
  switch (option.kind) {
    case 'sandbox': {
      const { generatePatients } = await import('../sandbox/synthetic-patients.ts');
      const patients = generatePatients({ count: option.patients, seed: option.seed, plantFacts: true });
      const served = await startEmbeddedSandbox((sandbox) =>
        sandbox.seed(patients.flatMap((patient) => patient.resources)),
      );
      const fhir = new FhirClient({ baseUrl: served.baseUrl });
      return {
        description: `embedded sandbox: ${option.patients} synthetic patients, seed ${option.seed}, planted statements`,
        fhir,
        cases: await casesFor(
          fhir,
          patients.map((patient) => patient.patientId),
        ),
        planted: new Map(
          patients.map((patient) => [
            patient.patientId,
            patient.plantedFacts.map((fact) => ({ terms: fact.terms, note: fact.note })),
          ]),
        ),
        close: served.close,
      };
    }
    case 'ndjson': {
      const { loadNdjsonFolder } = await import('../sandbox/load-ndjson.ts');
      let patientIds: string[] = [];
      const served = await startEmbeddedSandbox(async (sandbox) => {
        patientIds = (await loadNdjsonFolder(sandbox, option.folder)).patientIds;
      });
      const fhir = new FhirClient({ baseUrl: served.baseUrl });
      return {
        description: `NDJSON folder loaded into the embedded sandbox (${Math.min(option.patients, patientIds.length)} of ${patientIds.length} patients)`,
        fhir,
        cases: await casesFor(fhir, patientIds.slice(0, option.patients)),
        planted: new Map(),
        close: served.close,
      };
    }
    case 'fhir-base': {
      const fhir = new FhirClient({ baseUrl: option.url });
      const page = await fhir.searchPage('Patient', { _count: option.patients, _elements: 'id' });
      const patientIds = (page.entry ?? [])
        .map((entry) => (entry.resource as Patient | undefined)?.id)
        .filter((id): id is string => typeof id === 'string')
        .slice(0, option.patients);
      return {
        description: `FHIR server ${new URL(option.url).origin} (${patientIds.length} patients, first page of Patient)`,
        fhir,
        cases: await casesFor(fhir, patientIds),
        planted: new Map(),
        close: async () => {},
      };
    }
  }
}
