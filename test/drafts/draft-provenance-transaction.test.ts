import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import { forbidden, OperationOutcomeError as MedplumOutcomeError } from '@medplum/core';
import type { DocumentReference, Provenance } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { type DraftContent, DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { createLogger, silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { WorkerPool } from '../../src/pipeline/worker-pool.ts';
import { SqliteJobQueue } from '../../src/queue/sqlite-job-queue.ts';
import type { ObservedRepository, ResourceWrite } from '../../src/sandbox/observed-repository.ts';
import { startFhirTestServer } from '../fhir/fhir-test-server.ts';
import { draftContentFor, seedChart } from '../fhir/seed.ts';
import {
  type FhirStandIn,
  type FhirStandInOptions,
  seedEncounters,
  startFhirStandIn,
} from '../support/fhir-stand-in.ts';
import { startIntakeHarness, waitFor } from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';

/**
 * The draft and its AI Provenance: one transaction (neither exists without the other, against the
 * stand-in and against the sandbox's real FHIR engine); without transactions, a Provenance written on
 * a retry states the versions the draft was made from, never later ones; every FHIR failure names
 * the request, its status, the server's diagnostics and the scope probably missing; and
 * `fhir.declareProfiles: false` leaves meta.profile off, which is what Medplum refuses without
 * StructureDefinition access.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const modelEngine = { id: 'medgemma', version: '1', model: 'MedGemma 27B' };

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

async function standIn(options: FhirStandInOptions = {}): Promise<FhirStandIn> {
  const server = await startFhirStandIn(options);
  cleanups.push(() => server.close());
  seedEncounters(server, 1);
  return server;
}

/** Medplum under the default scopes: a resource declaring meta.profile needs StructureDefinition access. */
const refuseProfiled: FhirStandInOptions['refuseWrite'] = (resource) =>
  (resource.meta as { profile?: string[] } | undefined)?.profile?.length
    ? { status: 403, diagnostics: 'Forbidden' }
    : undefined;

const refuseProvenance: FhirStandInOptions['refuseWrite'] = (resource) =>
  resource.resourceType === 'Provenance' ? { status: 403, diagnostics: 'Forbidden' } : undefined;

/** A draft of the stand-in's one encounter, citing its Condition and Encounter at their current versions. */
function contentFor(server: FhirStandIn): DraftContent {
  const condition = server.get('Condition', 'stand-in-condition');
  const encounter = server.get('Encounter', 'enc-0');
  return {
    kind: 'progress-summary',
    title: 'AI draft progress summary',
    text: '## Progress summary\n- Type 2 diabetes mellitus [Condition/stand-in-condition]\n- Visit [Encounter/enc-0]\n',
    engine: modelEngine,
    prompt: { id: 'progress-summary', version: '3', rendered: 'Summarise the record.' },
    sources: new Map([
      ['Condition/stand-in-condition', condition.meta?.versionId],
      ['Encounter/enc-0', encounter.meta?.versionId],
    ]),
    verification: { cited: 2, removed: 0, flagged: false },
    rules: [{ id: 'hba1c-overdue', version: '2' }],
  };
}

function writerFor(server: FhirStandIn, options: ConstructorParameters<typeof DraftNoteWriter>[2] = {}) {
  return new DraftNoteWriter(
    new FhirClient({ baseUrl: server.url, maxAttempts: 1 }),
    identifierSystem,
    options,
  );
}

async function writeStandInDraft(server: FhirStandIn, writer: DraftNoteWriter) {
  return writer.write(
    contentFor(server),
    server.get('Patient', 'stand-in-patient') as never,
    server.get('Encounter', 'enc-0') as never,
  );
}

const sourcesOf = (provenance: Provenance) =>
  (provenance.entity ?? [])
    .filter((entity) => entity.role === 'source')
    .map((entity) => entity.what.reference)
    .sort();

describe('the draft and its Provenance are written together or not at all', () => {
  it('stand-in: a refused Provenance leaves no draft and no Device; a retry then writes each once', async () => {
    let refusing = true;
    const server = await standIn({
      refuseWrite: (resource, interaction) =>
        refusing ? refuseProvenance?.(resource, interaction) : undefined,
    });
    const writer = writerFor(server);
    await expect(writeStandInDraft(server, writer)).rejects.toMatchObject({ status: 403 });
    expect(server.all('DocumentReference')).toEqual([]);
    expect(server.all('Provenance')).toEqual([]);
    expect(server.all('Device')).toEqual([]);
    // Only transactions were sent: no write went to the server on its own.
    expect(server.requests.filter((request) => request.startsWith('POST')).every((r) => r === 'POST /')).toBe(
      true,
    );

    refusing = false;
    const first = await writeStandInDraft(server, writer);
    const again = await writeStandInDraft(server, writer);
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false, draft: { id: first.draft.id } });
    expect(again.provenance?.id).toBe(first.provenance?.id);
    expect(server.all('DocumentReference')).toHaveLength(1);
    expect(server.all('Provenance')).toHaveLength(1);
    expect(server.all('Device')).toHaveLength(1);
    const [provenance] = server.all('Provenance') as unknown as Provenance[];
    // The urn:uuid references were resolved to the resources the transaction wrote.
    expect(provenance.target).toEqual([{ reference: `DocumentReference/${first.draft.id}` }]);
    expect(provenance.agent[0].who?.reference).toBe(first.draft.author?.[0].reference);
    expect(first.draft.author?.[0].reference).toBe(`Device/${server.all('Device')[0].id}`);
  });

  it('sandbox engine: an entry refused mid-transaction undoes the writes before it and announces none', async () => {
    const server = await startFhirTestServer();
    cleanups.push(() => server.close());
    const chart = await seedChart(server.repository);
    const repository = server.repository as unknown as ObservedRepository;
    let refusing = true;
    const attempted: string[] = [];
    repository.guardWrites((resource) => {
      attempted.push(resource.resourceType);
      if (refusing && resource.resourceType === 'Provenance') throw new MedplumOutcomeError(forbidden);
      return undefined;
    });
    const announced: ResourceWrite[] = [];
    repository.onWrite((write) => announced.push(write));
    const fhir = new FhirClient({ baseUrl: server.baseUrl, maxAttempts: 1 });
    const writer = new DraftNoteWriter(fhir, identifierSystem);
    // The chart's own notes are DocumentReferences too: drafts are the ones with the draft identifier.
    const drafts = async () =>
      (
        await fhir.search<DocumentReference>('DocumentReference', { subject: `Patient/${chart.patient.id}` })
      ).filter((document) =>
        document.identifier?.some((identifier) => identifier.system === identifierSystem),
      );

    const refused = await writer
      .write(draftContentFor(chart), chart.patient, chart.encounter)
      .catch((error) => error);
    expect(refused).toMatchObject({ status: 403 });
    // The Device and the draft were written before the Provenance was refused: the engine took them back.
    expect(attempted).toEqual(['Device', 'DocumentReference', 'Provenance']);
    expect(await fhir.search('Device', {})).toEqual([]);
    expect(await drafts()).toEqual([]);
    expect(await fhir.search('Provenance', {})).toEqual([]);
    expect(announced).toEqual([]);

    refusing = false;
    const written = await writer.write(draftContentFor(chart), chart.patient, chart.encounter);
    const repeated = await writer.write(draftContentFor(chart), chart.patient, chart.encounter);
    expect(written.created).toBe(true);
    expect(repeated).toMatchObject({ created: false, draft: { id: written.draft.id } });
    expect((await drafts()).map((draft) => draft.id)).toEqual([written.draft.id]);
    const provenances = await fhir.search<Provenance>('Provenance', {});
    expect(provenances).toHaveLength(1);
    expect(provenances[0].target).toEqual([{ reference: `DocumentReference/${written.draft.id}` }]);
    expect(announced.map((write) => write.current.resourceType)).toEqual([
      'Device',
      'DocumentReference',
      'Provenance',
    ]);
  });
});

describe('servers without transactions (fhir.transactions: false)', () => {
  it('a retry that finds the draft writes its Provenance from the versions the draft was made from', async () => {
    let provenanceRefusals = 1;
    const server = await standIn({
      transactions: false,
      refuseWrite: (resource) => {
        if (resource.resourceType !== 'Provenance' || provenanceRefusals === 0) return undefined;
        provenanceRefusals--;
        return { status: 503, diagnostics: 'Provenance store unavailable' };
      },
    });
    const fhir = new FhirClient({ baseUrl: server.url, maxAttempts: 1 });
    const writer = new DraftNoteWriter(fhir, identifierSystem, { transactions: false });
    const dependencies = {
      fhir,
      engine: createExtractiveEngine(),
      writer,
      triggers: { finished: 'progress-summary' as const },
      draftIdentifierSystem: identifierSystem,
      logger: silentLogger(),
    };
    const job = {
      id: 'job-1',
      encounterId: 'enc-0',
      source: 'test',
      status: 'running' as const,
      attempts: 1,
      createdAt: new Date().toISOString(),
      runAt: new Date().toISOString(),
    };
    await expect(processEncounterJob(job, dependencies)).rejects.toMatchObject({ status: 503 });
    const [draft] = server.all('DocumentReference') as unknown as DocumentReference[];
    expect(draft).toBeDefined();
    expect(server.all('Provenance')).toEqual([]);

    // After the draft: discharge codes on the Encounter, a corrected Condition (new versions of both).
    const encounter = server.get('Encounter', 'enc-0');
    server.write({ ...encounter, type: [{ text: 'Follow-up visit' }] });
    const condition = server.get('Condition', 'stand-in-condition');
    server.write({ ...condition, code: { text: 'Type 2 diabetes mellitus, corrected' } });
    expect(server.get('Encounter', 'enc-0').meta?.versionId).toBe('2');

    // The retry finds the first version without its Provenance and the encounter since updated: that version
    // gets its Provenance from its own record first, then the untouched draft is refreshed (item 8) with a
    // Provenance of its own for the second version.
    expect(await processEncounterJob({ ...job, id: 'job-2', attempts: 2 }, dependencies)).toBe(
      'draft-refreshed',
    );
    const provenances = server.all('Provenance') as unknown as Provenance[];
    expect(provenances).toHaveLength(2);
    const targeting = (version: string) =>
      provenances.find(
        (provenance) =>
          provenance.target[0].reference === `DocumentReference/${draft.id}/_history/${version}`,
      ) as Provenance;
    const sources = sourcesOf(targeting('1'));
    expect(sources).toContain('Encounter/enc-0/_history/1');
    expect(sources).toContain('Condition/stand-in-condition/_history/1');
    expect(sources.filter((source) => source?.endsWith('/_history/2'))).toEqual([]);
    // Exactly what the draft records of itself, nothing this run read.
    const recorded = (draft.context?.related ?? []).flatMap((related) => related.reference ?? []).sort();
    expect(sources).toEqual(recorded);
    expect(sourcesOf(targeting('2'))).toContain('Encounter/enc-0/_history/2');
    expect(targeting('2').entity).toContainEqual({
      role: 'revision',
      what: { reference: `DocumentReference/${draft.id}/_history/1` },
    });
    // The server was never sent a transaction it does not take.
    expect(server.requests).not.toContain('POST /');
  });
});

describe('FHIR failures name the request, the status, the diagnostics and the missing scope', () => {
  it('a 403 inside the transaction names the entry, the scope and the StructureDefinition access', async () => {
    const server = await standIn({ refuseWrite: refuseProvenance });
    const error = await writeStandInDraft(server, writerFor(server)).catch((caught) => caught);
    expect(error.message).toBe(
      '403 on transaction (entry 3: create Provenance): Forbidden; ' +
        'the token probably lacks system/Provenance.c (or .crus); ' +
        'a resource declaring meta.profile also needs system/StructureDefinition.rs on Medplum (or set fhir.declareProfiles: false)',
    );
  });

  it('a refused create names the interaction and type; long diagnostics are cut short', async () => {
    const echo = `Resource rejected: ${'Synthetic, Test 1970-01-01 '.repeat(60)}`;
    const server = await standIn({
      transactions: false,
      refuseWrite: (resource) =>
        resource.resourceType === 'DocumentReference' ? { status: 403, diagnostics: echo } : undefined,
    });
    const error = await writeStandInDraft(server, writerFor(server, { transactions: false })).catch(
      (caught) => caught,
    );
    expect(error.message).toMatch(/^403 on create DocumentReference: Resource rejected: Synthetic/);
    expect(error.message).toMatch(
      /\.\.\.; the token probably lacks system\/DocumentReference\.c \(or \.crus\)$/,
    );
    expect(error.message.length).toBeLessThan(450);
    expect(server.all('DocumentReference')).toEqual([]);
  });

  it('the job record and the log name the failed request; the log carries no resource', async () => {
    const server = await standIn({ refuseWrite: refuseProfiled });
    const directory = mkdtempSync(path.join(tmpdir(), 'provenance-job-'));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    const queue = new SqliteJobQueue(path.join(directory, 'queue.sqlite'), {
      maxAttempts: 3,
      backoffBaseMs: 10,
      backoffMaxMs: 20,
      leaseMs: 5_000,
    });
    cleanups.push(() => queue.close());
    const lines: string[] = [];
    const logger = createLogger({
      level: 'info',
      destination: new Writable({
        write(chunk, _encoding, done) {
          lines.push(String(chunk));
          done();
        },
      }),
    });
    const fhir = new FhirClient({ baseUrl: server.url, maxAttempts: 1 });
    const writer = new DraftNoteWriter(fhir, identifierSystem);
    const workers = new WorkerPool({
      queue,
      concurrency: 1,
      pollIntervalMs: 10,
      logger,
      process: (job) =>
        processEncounterJob(job, {
          fhir,
          engine: createExtractiveEngine(),
          writer,
          triggers: { finished: 'progress-summary' },
          draftIdentifierSystem: identifierSystem,
          logger,
        }),
    });
    await queue.enqueue([{ encounterId: 'enc-0', source: 'test' }]);
    workers.start();
    cleanups.push(() => workers.stop(1_000));
    const [failed] = await waitFor(async () => {
      const list = await queue.list('failed');
      return list.length > 0 ? list : undefined;
    }, 'the job to be dead-lettered');
    // The extractive engine's Provenance declares the AI-Provenance profile; its Device is no AI-Device.
    expect(failed.lastError).toBe(
      '403 on transaction (entry 3: create Provenance): Forbidden; ' +
        'the token probably lacks system/Provenance.c (or .crus); ' +
        'a resource declaring meta.profile also needs system/StructureDefinition.rs on Medplum (or set fhir.declareProfiles: false)',
    );
    const logged = lines.map((line) => JSON.parse(line)).find((line) => line.msg === 'job-dead-lettered');
    expect(logged).toMatchObject({
      jobId: failed.id,
      status: 403,
      interaction: 'transaction',
      error: failed.lastError,
    });
    const everything = lines.join('\n');
    expect(everything).not.toContain('Synthetic');
    expect(everything).not.toContain('Type 2 diabetes');
    expect(everything).not.toContain('resourceType');
    expect(server.all('DocumentReference')).toEqual([]);
  });
});

describe('fhir.declareProfiles', () => {
  it('false: nothing written declares meta.profile, and a Medplum-like server takes the draft', async () => {
    const server = await standIn({ refuseWrite: refuseProfiled });
    await expect(writeStandInDraft(server, writerFor(server))).rejects.toMatchObject({ status: 403 });
    const written = await writeStandInDraft(server, writerFor(server, { declareProfiles: false }));
    expect(written.created).toBe(true);
    for (const type of ['Device', 'DocumentReference', 'Provenance']) {
      const [resource] = server.all(type);
      expect(resource, type).toBeDefined();
      expect((resource.meta as { profile?: string[] }).profile, type).toBeUndefined();
    }
    // The AI Transparency content stays: only the profile declaration goes.
    const [provenance] = server.all('Provenance') as unknown as Provenance[];
    expect(provenance.agent[0].role?.[0].coding?.[0].code).toBe('Artificial-Intelligence');
  });

  it('is read from the configuration (default true), like fhir.transactions', () => {
    const defaults = loadConfig({ env: {} });
    expect(defaults.fhir).toMatchObject({ declareProfiles: true, transactions: true });
    const configured = loadConfig({
      env: { EHR_AGENT_FHIR__DECLARE_PROFILES: 'false', EHR_AGENT_FHIR__TRANSACTIONS: 'false' },
    });
    expect(configured.fhir).toMatchObject({ declareProfiles: false, transactions: false });
  });

  it('the service honours it: against a Medplum-like server the default is refused, false writes the draft', async () => {
    for (const declareProfiles of [true, false]) {
      const harness = await startIntakeHarness(
        { fhir: { declareProfiles }, queue: { maxAttempts: 1 } },
        { refuseWrite: refuseProfiled },
      );
      cleanups.push(() => harness.close());
      const [encounterId] = seedEncounters(harness.standIn, 1);
      const response = await harness.post(
        '/notify',
        notificationBundle({
          subscription: 'Subscription/profiles',
          counter: 1,
          events: [{ number: 1, focus: `Encounter/${encounterId}` }],
        }),
      );
      expect(response.status).toBe(200);
      const counts = await waitFor(async () => {
        const now = await harness.service.queue.counts();
        return now.done + now.failed > 0 ? now : undefined;
      }, 'the job to settle');
      expect(counts).toMatchObject(declareProfiles ? { failed: 1, done: 0 } : { failed: 0, done: 1 });
      expect(harness.standIn.all('DocumentReference')).toHaveLength(declareProfiles ? 0 : 1);
      expect(harness.standIn.all('Provenance')).toHaveLength(declareProfiles ? 0 : 1);
    }
  }, 60_000);
});
