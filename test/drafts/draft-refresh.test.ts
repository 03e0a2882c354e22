import type { Condition, DocumentReference, Encounter, Observation, Provenance } from 'fhir/r4.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { createDraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { describeRecordChange, recordChangeSince } from '../../fhir/draft-refresh.ts';
import type { DraftMode } from '../../fhir/draft-store.ts';
import { FhirClient, type TransactionEntry, type TransactionEntryResult } from '../../fhir/fhir-client.ts';
import { inlineNoteText } from '../../fhir/note-text.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import type { EncounterJob } from '../../src/queue/job-queue.ts';
import type { RunningService } from '../../src/service.ts';
import { type FhirTestServer, startFhirTestServer } from '../fhir/fhir-test-server.ts';
import { create, type SeededChart, seedChart } from '../fhir/seed.ts';
import {
  draftsFor,
  finishedEncounter,
  startSandboxService,
  waitForIdleQueue,
} from '../integration/service-harness.ts';

/**
 * Stale drafts (issue 12, item 8): a later version of a drafted encounter rewrites the draft in place while
 * nobody has touched it (a new version of the same DocumentReference, with an AI Provenance for it); once a
 * clinician has edited, signed or rejected it, the draft is never rewritten and the record's change since
 * it was drafted is noted beside it instead. Run on the service with its sandbox EHR (Medplum's engine, which
 * honours If-Match, in transactions too), and with a clinician's edit landing between the service's read and
 * its write.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const practitioner = 'Practitioner/pr-refresh';
const patientId = 'sbx-0001';

const textOf = (document: DocumentReference) => inlineNoteText(document) ?? '';
const sourcesOf = (provenance: Provenance) =>
  (provenance.entity ?? [])
    .filter((entity) => entity.role === 'source')
    .map((entity) => entity.what.reference as string);

describe('the service refreshes an untouched draft, and only an untouched one', () => {
  let service: RunningService;
  let fhir: FhirClient;

  beforeAll(async () => {
    ({ service, fhir } = await startSandboxService());
  });
  afterAll(async () => {
    await service?.close();
  });

  /** Runs one job for the encounter, as an event would queue it, and returns its outcome. */
  async function runJob(encounterId: string): Promise<string | undefined> {
    const settled = async () =>
      [...(await service.queue.list('done', 1000)), ...(await service.queue.list('failed', 1000))].filter(
        (job) => job.encounterId === encounterId,
      );
    const before = new Set((await settled()).map((job) => job.id));
    await service.queue.enqueue([{ encounterId, source: 'test' }]);
    await waitForIdleQueue(service);
    const job = (await settled()).find((candidate) => !before.has(candidate.id));
    return job?.outcome ?? job?.lastError;
  }

  async function draftedEncounter(id: string): Promise<{ encounter: Encounter; draft: DocumentReference }> {
    const encounter = finishedEncounter(patientId, id);
    await service.sandbox?.seed([encounter]);
    await runJob(id);
    const drafts = await draftsFor(fhir, id);
    expect(drafts).toHaveLength(1);
    return { encounter: await fhir.read<Encounter>('Encounter', id), draft: drafts[0] };
  }

  /** The encounter as discharge leaves it: a diagnosis coded on it (a new Condition) and its reason. */
  async function codeDiagnosis(encounter: Encounter, diagnosis: string): Promise<Encounter> {
    const condition: Condition = {
      resourceType: 'Condition',
      id: `${encounter.id}-dx`,
      subject: { reference: `Patient/${patientId}` },
      encounter: { reference: `Encounter/${encounter.id}` },
      clinicalStatus: {
        coding: [{ system: 'http://terminology.hl7.org/CodeSystem/condition-clinical', code: 'active' }],
      },
      code: { text: diagnosis },
      recordedDate: new Date().toISOString(),
    };
    await service.sandbox?.seed([
      condition,
      {
        ...encounter,
        reasonCode: [{ text: diagnosis }],
        diagnosis: [{ condition: { reference: `Condition/${condition.id}` } }],
      },
    ]);
    const updated = await fhir.read<Encounter>('Encounter', encounter.id as string);
    expect(updated.meta?.versionId).not.toBe(encounter.meta?.versionId);
    return updated;
  }

  const provenancesOf = async (documentId: string | undefined) =>
    (await fhir.search<Provenance>('Provenance', { _count: 1000 })).filter((provenance) =>
      provenance.target.some((target) => target.reference?.startsWith(`DocumentReference/${documentId}`)),
    );

  it('rewrites the same DocumentReference for a later encounter version, with a Provenance for that version', async () => {
    const { encounter, draft } = await draftedEncounter('refresh-visit-1');
    expect(textOf(draft)).not.toContain('Acute bronchitis');
    expect(await provenancesOf(draft.id)).toHaveLength(1);

    const updatedEncounter = await codeDiagnosis(encounter, 'Acute bronchitis');
    expect(await runJob('refresh-visit-1')).toBe('draft-refreshed');

    const drafts = await draftsFor(fhir, 'refresh-visit-1');
    expect(drafts).toHaveLength(1);
    const [refreshed] = drafts;
    expect(refreshed.id).toBe(draft.id);
    expect(refreshed.meta?.versionId).not.toBe(draft.meta?.versionId);
    expect(refreshed).toMatchObject({ status: 'current', docStatus: 'preliminary' });
    expect(refreshed.identifier).toEqual(draft.identifier);
    expect(refreshed.date).toBe(draft.date);
    const text = textOf(refreshed);
    expect(text).toContain('Acute bronchitis');
    expect(text).toContain(`[Condition/refresh-visit-1-dx]`);

    const provenances = await provenancesOf(draft.id);
    expect(provenances).toHaveLength(2);
    const forRefresh = provenances.find((provenance) =>
      provenance.entity?.some((entity) => entity.role === 'revision'),
    );
    // Tied to the version it rewrote (the new version's id is the server's to assign inside the transaction).
    expect(forRefresh?.entity?.find((entity) => entity.role === 'revision')?.what.reference).toBe(
      `DocumentReference/${draft.id}/_history/${draft.meta?.versionId}`,
    );
    expect(forRefresh?.target).toEqual([{ reference: `DocumentReference/${draft.id}` }]);
    const sources = sourcesOf(forRefresh as Provenance);
    expect(sources).toContain(`Encounter/refresh-visit-1/_history/${updatedEncounter.meta?.versionId}`);
    expect(sources.some((source) => source.startsWith('Condition/refresh-visit-1-dx/_history/'))).toBe(true);
    expect(forRefresh?.agent[0].who?.reference).toBe(refreshed.author?.[0].reference);

    const view = await service.draftLifecycle.getDraft(draft.id as string);
    expect(view?.updatedAt).toBeDefined();
    expect(Date.parse(view?.updatedAt as string)).toBeGreaterThanOrEqual(Date.parse(draft.date as string));
    expect(view?.recordChanged).toBeUndefined();

    // The same version again (a repeated event) changes nothing.
    expect(await runJob('refresh-visit-1')).toMatch(/^(skipped:already-done|draft-exists)$/);
    expect((await draftsFor(fhir, 'refresh-visit-1'))[0].meta?.versionId).toBe(refreshed.meta?.versionId);
  });

  it('keeps a clinician’s edit and says what changed in the record since the draft was written', async () => {
    const { encounter, draft } = await draftedEncounter('refresh-visit-2');
    const clinicianText = `${textOf(draft)}\n\nSeen and amended by the clinician.`;
    await service.draftLifecycle.editDraft(draft.id as string, clinicianText, practitioner);
    const edited = await fhir.read<DocumentReference>('DocumentReference', draft.id as string);

    // A result arrives after the visit, then the encounter is coded at discharge.
    const result = await create<Observation>(service.sandbox?.repository as never, {
      resourceType: 'Observation',
      status: 'final',
      subject: { reference: `Patient/${patientId}` },
      code: { text: 'C-reactive protein' },
      valueQuantity: { value: 42, unit: 'mg/L' },
      effectiveDateTime: new Date().toISOString(),
    });
    const updatedEncounter = await codeDiagnosis(encounter, 'Community-acquired pneumonia');
    expect(await runJob('refresh-visit-2')).toBe('record-change-noted');

    const [kept] = await draftsFor(fhir, 'refresh-visit-2');
    expect(kept.id).toBe(draft.id);
    expect(textOf(kept)).toBe(clinicianText);
    // The service wrote nothing to the clinician's draft: not even a note of the change.
    expect(kept.meta?.versionId).toBe(edited.meta?.versionId);
    // The draft's own AI Provenance and the clinician's edit; no AI Provenance for a text never written.
    expect(
      (await provenancesOf(draft.id)).map((provenance) => provenance.activity?.coding?.[0].code).sort(),
    ).toEqual(['CREATE', 'UPDATE']);

    const view = await service.draftLifecycle.getDraft(draft.id as string);
    expect(view?.text).toBe(clinicianText);
    expect(view?.updatedAt).toBeUndefined();
    expect(view?.recordChanged).toMatchObject({
      summary:
        'The record changed since this draft was written: 1 new result, 1 new diagnosis, encounter updated.',
      encounterFrom: encounter.meta?.versionId,
      encounterTo: updatedEncounter.meta?.versionId,
      counts: [
        { resourceType: 'Condition', added: 1, changed: 0, removed: 0 },
        { resourceType: 'Observation', added: 1, changed: 0, removed: 0 },
      ],
    });
    expect(view?.recordChanged?.added).toEqual(
      expect.arrayContaining([
        `Observation/${result.id}/_history/${result.meta?.versionId}`,
        expect.stringMatching(/^Condition\/refresh-visit-2-dx\/_history\//),
      ]),
    );
    // The list the review app loads says the same.
    const listed = (await service.draftLifecycle.listDrafts(patientId)).find(
      (candidate) => candidate.id === draft.id,
    );
    expect(listed?.recordChanged?.summary).toBe(view?.recordChanged?.summary);
  });

  it('never rewrites a signed draft', async () => {
    const { encounter, draft } = await draftedEncounter('refresh-visit-3');
    await service.draftLifecycle.signDraft(draft.id as string, { practitioner });
    const signed = await fhir.read<DocumentReference>('DocumentReference', draft.id as string);
    expect(signed.docStatus).toBe('final');

    await codeDiagnosis(encounter, 'Migraine without aura');
    expect(await runJob('refresh-visit-3')).toBe('record-change-noted');

    const [kept] = await draftsFor(fhir, 'refresh-visit-3');
    expect(kept.meta?.versionId).toBe(signed.meta?.versionId);
    expect(kept.docStatus).toBe('final');
    expect(textOf(kept)).toBe(textOf(signed));
    expect(textOf(kept)).not.toContain('Migraine');
    const view = await service.draftLifecycle.getDraft(draft.id as string);
    expect(view?.status).toBe('final');
    expect(view?.recordChanged?.summary).toBe(
      'The record changed since this draft was written: 1 new diagnosis, encounter updated.',
    );
  });
});

describe('a clinician’s edit between the refresh’s read and its write wins', () => {
  let server: FhirTestServer;
  let chart: SeededChart;
  const stores: SqliteDraftStore[] = [];

  beforeAll(async () => {
    server = await startFhirTestServer();
    chart = await seedChart(server.repository);
  });
  afterEach(async () => {
    for (const store of stores.splice(0)) await store.close();
  });
  afterAll(async () => {
    await server?.close();
  });

  /**
   * The service's FHIR client, with a hook that runs just before the refresh's write goes out: the moment
   * a clinician's save would have to land to race it.
   */
  class RacingClient extends FhirClient {
    beforeRefreshWrite: (() => Promise<void>) | undefined;
    refreshWrites = 0;
    /** Sends the next refresh transaction twice, as a client does whose first answer was lost on the way. */
    loseNextRefreshAnswer = false;

    async #race(isRefresh: boolean): Promise<void> {
      if (!isRefresh) return;
      this.refreshWrites++;
      const hook = this.beforeRefreshWrite;
      this.beforeRefreshWrite = undefined;
      await hook?.();
    }

    override async transaction(
      entries: TransactionEntry[],
      options?: Parameters<FhirClient['transaction']>[1],
    ): Promise<TransactionEntryResult[]> {
      const isRefresh = entries.some((entry) => entry.request.method === 'PUT');
      await this.#race(isRefresh);
      if (isRefresh && this.loseNextRefreshAnswer) {
        this.loseNextRefreshAnswer = false;
        await super.transaction(entries, options);
      }
      return super.transaction(entries, options);
    }

    override async update<T extends Parameters<FhirClient['update']>[0]>(
      resource: T,
      options?: Parameters<FhirClient['update']>[1],
    ): Promise<T> {
      await this.#race(resource.resourceType === 'DocumentReference' && !options?.signOff);
      return super.update(resource, options);
    }
  }

  function harness(mode: DraftMode, transactions: boolean) {
    const store = new SqliteDraftStore(':memory:');
    stores.push(store);
    const client = new RacingClient({ baseUrl: server.baseUrl, maxAttempts: 1 });
    const writer = new DraftNoteWriter(client, identifierSystem, { mode, store, transactions });
    const lifecycle = createDraftLifecycle({
      mode,
      identifierSystem,
      store,
      // The clinician's own client: it does not race itself.
      client: new FhirClient({ baseUrl: server.baseUrl }),
      requestRegeneration: () => undefined,
    });
    let jobs = 0;
    const run = (encounterId: string) =>
      processEncounterJob(
        {
          id: `job-${++jobs}`,
          encounterId,
          source: 'test',
          status: 'running',
          attempts: 1,
          createdAt: new Date().toISOString(),
          runAt: new Date().toISOString(),
        } satisfies EncounterJob,
        {
          fhir: client,
          engine: createExtractiveEngine(),
          writer,
          triggers: { finished: 'progress-summary' },
          draftIdentifierSystem: identifierSystem,
          logger: silentLogger(),
        },
      );
    return { client, writer, lifecycle, store, run };
  }

  async function newEncounter(): Promise<Encounter> {
    return create<Encounter>(server.repository, {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      type: [{ text: 'Office visit' }],
      subject: { reference: `Patient/${chart.patient.id}` },
      period: { start: '2026-11-20T09:00:00Z', end: '2026-11-20T09:30:00Z' },
    });
  }

  async function updateEncounter(encounter: Encounter, reason: string): Promise<Encounter> {
    return (await server.repository.updateResource({
      ...encounter,
      reasonCode: [{ text: reason }],
    } as never)) as unknown as Encounter;
  }

  const provenancesOf = async (documentId: string | undefined) =>
    (
      await new FhirClient({ baseUrl: server.baseUrl }).search<Provenance>('Provenance', { _count: 1000 })
    ).filter((provenance) =>
      provenance.target.some((target) => target.reference?.startsWith(`DocumentReference/${documentId}`)),
    );

  for (const transactions of [true, false]) {
    it(`EHR draft (${transactions ? 'one transaction' : 'servers without transactions'}): the refresh meets 412, reads again, keeps the edit`, async () => {
      const h = harness('write', transactions);
      const encounter = await newEncounter();
      expect(await h.run(encounter.id as string)).toBe('draft-created');
      const [draft] = (
        await h.client.search<DocumentReference>('DocumentReference', {
          encounter: `Encounter/${encounter.id}`,
        })
      ).filter((document) =>
        document.identifier?.some((identifier) => identifier.system === identifierSystem),
      );
      const clinicianText = 'The clinician’s own words, saved while the service was drafting.';

      await updateEncounter(encounter, 'Chest pain');
      h.client.beforeRefreshWrite = async () => {
        await h.lifecycle.editDraft(draft.id as string, clinicianText, practitioner);
      };
      expect(await h.run(encounter.id as string)).toBe('record-change-noted');
      expect(h.client.refreshWrites).toBe(1);

      const current = await h.client.read<DocumentReference>('DocumentReference', draft.id as string);
      expect(textOf(current)).toBe(clinicianText);
      expect(textOf(current)).not.toContain('Chest pain');
      // The AI Provenance of the first text and the clinician's edit; the refused refresh wrote none.
      expect(
        (await provenancesOf(draft.id)).map((provenance) => provenance.activity?.coding?.[0].code).sort(),
      ).toEqual(['CREATE', 'UPDATE']);
      const view = await h.lifecycle.getDraft(draft.id as string);
      expect(view?.recordChanged?.summary).toBe(
        'The record changed since this draft was written: encounter updated.',
      );
    });
  }

  it('two jobs for two later versions race: the later version’s text stands', async () => {
    const h = harness('write', true);
    const encounter = await newEncounter();
    expect(await h.run(encounter.id as string)).toBe('draft-created');
    const second = await updateEncounter(encounter, 'Palpitations');
    // While the job for the second version drafts, a third version arrives and its job finishes first.
    h.client.beforeRefreshWrite = async () => {
      await updateEncounter(second, 'Atrial fibrillation');
      expect(await h.run(encounter.id as string)).toBe('draft-refreshed');
    };
    expect(await h.run(encounter.id as string)).toBe('skipped:encounter-changed-meanwhile');
    expect(h.client.refreshWrites).toBe(2);
    const [draft] = (
      await h.client.search<DocumentReference>('DocumentReference', {
        encounter: `Encounter/${encounter.id}`,
      })
    ).filter((document) => document.identifier?.some((identifier) => identifier.system === identifierSystem));
    expect(textOf(draft)).toContain('Atrial fibrillation');
    expect(textOf(draft)).not.toContain('Palpitations');
    expect(await provenancesOf(draft.id)).toHaveLength(2);
  });

  it('a refresh sent again after its answer was lost finds its own new version and writes nothing more', async () => {
    const h = harness('write', true);
    const encounter = await newEncounter();
    expect(await h.run(encounter.id as string)).toBe('draft-created');
    await updateEncounter(encounter, 'Dizziness');
    h.client.loseNextRefreshAnswer = true;
    expect(await h.run(encounter.id as string)).toBe('draft-refreshed');
    const [draft] = (
      await h.client.search<DocumentReference>('DocumentReference', {
        encounter: `Encounter/${encounter.id}`,
      })
    ).filter((document) => document.identifier?.some((identifier) => identifier.system === identifierSystem));
    expect(textOf(draft)).toContain('Dizziness');
    const history = await h.client.get<{ entry?: unknown[] }>(`DocumentReference/${draft.id}/_history`);
    expect(history.entry).toHaveLength(2);
    expect(await provenancesOf(draft.id)).toHaveLength(2);
  });

  it('held draft (the service’s store): refreshed in place, then kept once the clinician edits it', async () => {
    const h = harness('hold', true);
    const encounter = await newEncounter();
    expect(await h.run(encounter.id as string)).toBe('draft-created');
    const [held] = await h.lifecycle
      .listDrafts(chart.patient.id as string)
      .then((drafts) => drafts.filter((draft) => draft.encounterId === encounter.id));

    const second = await updateEncounter(encounter, 'Shortness of breath');
    expect(await h.run(encounter.id as string)).toBe('draft-refreshed');
    const refreshed = await h.store.get(held.id);
    expect(refreshed?.text).toContain('Shortness of breath');
    expect(refreshed?.earlierProvenances).toHaveLength(1);
    expect(refreshed?.provenance.entity?.map((entity) => entity.what.reference)).toContain(
      `Encounter/${encounter.id}/_history/${second.meta?.versionId}`,
    );
    expect((await h.lifecycle.getDraft(held.id))?.updatedAt).toBeDefined();
    // Nothing of a held draft reaches the EHR before sign-off.
    expect(
      (
        await h.client.search<DocumentReference>('DocumentReference', {
          encounter: `Encounter/${encounter.id}`,
        })
      ).length,
    ).toBe(0);

    // The clinician's save lands between the refresh's read and its write: the store's own check refuses it.
    await updateEncounter(second, 'Syncope');
    const clinicianText = 'Held draft, rewritten by the clinician.';
    const storeReplace = h.store.replace.bind(h.store);
    let raced = false;
    h.store.replace = async (draft, expected) => {
      if (!raced && draft.events.length === 0) {
        raced = true;
        await h.lifecycle.editDraft(held.id, clinicianText, practitioner);
      }
      return storeReplace(draft, expected);
    };
    expect(await h.run(encounter.id as string)).toBe('record-change-noted');
    expect(raced).toBe(true);
    const kept = await h.lifecycle.getDraft(held.id);
    expect(kept?.text).toBe(clinicianText);
    expect(kept?.recordChanged?.summary).toBe(
      'The record changed since this draft was written: encounter updated.',
    );
  });
});

describe('what the record change says', () => {
  const at = (minutes: number) => new Date(Date.UTC(2026, 10, 20, 10, minutes)).toISOString();
  const resource = (reference: string, versionId: string, lastUpdated: string) => {
    const [resourceType, id] = reference.split('/');
    return { resourceType, id, meta: { versionId, lastUpdated } } as never;
  };

  it('counts new, updated and removed entries by type, from the draft’s sources and how far its record reached', () => {
    const change = recordChangeSince({
      encounter: resource('Encounter/visit', '3', at(40)),
      basis: { encounterVersion: '2', retrievedThrough: at(10) },
      sources: new Map([
        ['Condition/dm', '1'],
        ['Observation/old-a1c', '1'],
        ['Observation/bp', '4'],
        ['Encounter/visit', '2'],
        ['Patient/p1', '1'],
      ]),
      current: [
        resource('Patient/p1', '2', at(30)),
        resource('Encounter/visit', '3', at(40)),
        resource('Condition/dm', '2', at(20)),
        resource('Observation/bp', '4', at(5)),
        resource('Observation/a1c', '1', at(25)),
        resource('Observation/crp', '1', at(26)),
        // Read for the draft, not cited, unchanged since: not a change.
        resource('Observation/lipids', '1', at(9)),
      ],
      now: new Date(at(41)),
    });
    expect(change).toMatchObject({
      encounterFrom: '2',
      encounterTo: '3',
      added: ['Observation/a1c/_history/1', 'Observation/crp/_history/1'],
      changed: ['Condition/dm/_history/2'],
      removed: ['Observation/old-a1c/_history/1'],
    });
    expect(describeRecordChange(change)).toBe(
      'The record changed since this draft was written: 2 new results, 1 updated diagnosis, 1 removed result, encounter updated.',
    );
  });

  it('without a recorded read-through time, reports only what the draft cites', () => {
    const change = recordChangeSince({
      encounter: resource('Encounter/visit', '2', at(40)),
      basis: { encounterVersion: '2' },
      sources: new Map([['Condition/dm', '1']]),
      current: [resource('Condition/dm', '1', at(1)), resource('Observation/new', '1', at(39))],
      now: new Date(at(41)),
    });
    expect(change.counts).toEqual([]);
    expect(describeRecordChange(change)).toBe('The record changed since this draft was written.');
  });
});
