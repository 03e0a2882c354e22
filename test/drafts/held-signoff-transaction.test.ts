import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { DocumentReference, Encounter, Patient, Provenance } from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import { createDraftLifecycle, type DraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import { type DraftContent, DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient, staticAccessToken } from '../../fhir/fhir-client.ts';
import { defaultBackendScopes, defaultLaunchScopes } from '../../src/config/auth-config.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { create, draftContentFor, seedChart } from '../fhir/seed.ts';
import {
  type FhirStandIn,
  type FhirStandInOptions,
  seedEncounters,
  startFhirStandIn,
} from '../support/fhir-stand-in.ts';
import { startSandboxWithTokens } from './sandbox-with-tokens.ts';

/**
 * Hold mode's sign-off: the EHR sees the note for the first time, final, together with its AI Provenance
 * and the sign-off Provenance. In one transaction, a refused Provenance leaves no final note behind; a
 * sign-off repeated after a lost answer adds nothing. Without transactions (`fhir.transactions: false`) the
 * store marks the draft signed only once both Provenances exist, and signing again completes what is
 * missing without duplicating anything.
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const practitioner = 'Practitioner/pr-7';

const cleanups: (() => Promise<void> | void)[] = [];
afterEach(async () => {
  for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
});

function tempStore(): SqliteDraftStore {
  const directory = mkdtempSync(path.join(tmpdir(), 'held-signoff-'));
  const store = new SqliteDraftStore(path.join(directory, 'drafts.sqlite'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  cleanups.push(() => store.close());
  return store;
}

function standInContent(server: FhirStandIn): DraftContent {
  return {
    kind: 'progress-summary',
    title: 'AI draft progress summary',
    text: '## Progress summary (AI draft - not final until signed by a clinician)\n- Diabetes [Condition/stand-in-condition]\n',
    engine: { id: 'medgemma', version: '1', model: 'MedGemma 27B' },
    prompt: { id: 'progress-summary', version: '3', rendered: 'Summarise the record.' },
    sources: new Map([
      ['Condition/stand-in-condition', server.get('Condition', 'stand-in-condition').meta?.versionId],
    ]),
    verification: { cited: 1, removed: 0, flagged: false },
  };
}

/** Refuses sign-off Provenances (activity AU) while `refusing` is set, as an access policy might. */
function refusingSignOff(state: { refusing: boolean }): FhirStandInOptions['refuseWrite'] {
  return (resource) =>
    state.refusing &&
    resource.resourceType === 'Provenance' &&
    (resource as unknown as Provenance).activity?.coding?.[0]?.code === 'AU'
      ? { status: 403, diagnostics: 'Forbidden' }
      : undefined;
}

async function heldDraftOnStandIn(options: { transactions: boolean; state: { refusing: boolean } }) {
  const server = await startFhirStandIn({
    transactions: options.transactions,
    refuseWrite: refusingSignOff(options.state),
  });
  cleanups.push(() => server.close());
  seedEncounters(server, 1);
  const client = new FhirClient({ baseUrl: server.url, maxAttempts: 1 });
  const store = tempStore();
  const writer = new DraftNoteWriter(client, identifierSystem, { mode: 'hold', store });
  const { draft } = await writer.write(
    standInContent(server),
    server.get('Patient', 'stand-in-patient') as unknown as Patient,
    server.get('Encounter', 'enc-0') as unknown as Encounter,
  );
  const lifecycle = createDraftLifecycle({
    mode: 'hold',
    identifierSystem,
    store,
    client,
    serviceClient: client,
    transactions: options.transactions,
    requestRegeneration: () => undefined,
  });
  return { server, store, lifecycle, draftId: draft.id as string };
}

const provenanceKinds = (server: FhirStandIn) =>
  (server.all('Provenance') as unknown as Provenance[])
    .map((provenance) => provenance.activity?.coding?.[0]?.code)
    .sort();

describe('hold-mode sign-off in one transaction', () => {
  it('a refused Provenance leaves no final note in the EHR, and the draft stays preliminary', async () => {
    const state = { refusing: true };
    const { server, store, lifecycle, draftId } = await heldDraftOnStandIn({ transactions: true, state });

    const error = await lifecycle.signDraft(draftId, { practitioner }).catch((caught) => caught);
    expect(error).toMatchObject({ status: 403 });
    expect(error.message).toMatch(/^403 on transaction \(entry 3: create Provenance\): Forbidden/);
    expect(server.all('DocumentReference')).toEqual([]);
    expect(server.all('Provenance')).toEqual([]);
    expect((await store.get(draftId))?.status).toBe('preliminary');
    // The note, the AI Provenance and the sign-off went as one request; only the Device went on its own.
    const posts = server.requests.filter((request) => request.startsWith('POST'));
    expect(posts.filter((request) => request !== 'POST /Device')).toEqual(['POST /']);

    state.refusing = false;
    const signed = await lifecycle.signDraft(draftId, { practitioner });
    expect(signed.status).toBe('final');
    const [note] = server.all('DocumentReference') as unknown as DocumentReference[];
    expect(server.all('DocumentReference')).toHaveLength(1);
    expect(note).toMatchObject({
      id: signed.fhirId,
      docStatus: 'final',
      authenticator: { reference: practitioner },
    });
    expect(provenanceKinds(server)).toEqual(['AU', 'CREATE']);
    for (const provenance of server.all('Provenance') as unknown as Provenance[])
      expect(provenance.target).toEqual([{ reference: `DocumentReference/${note.id}` }]);
  });

  it('a sign-off repeated after its answer was lost finds the note and both Provenances, adding nothing', async () => {
    const state = { refusing: false };
    const { server, store, lifecycle, draftId } = await heldDraftOnStandIn({ transactions: true, state });
    const before = await store.get(draftId);
    await lifecycle.signDraft(draftId, { practitioner });
    // The EHR has the note, but the service never recorded it (the answer was lost): the draft is preliminary.
    const after = await store.get(draftId);
    expect(
      await store.replace(
        { ...(before as NonNullable<typeof before>), updatedAt: new Date(Date.now() + 60_000).toISOString() },
        after?.updatedAt as string,
      ),
    ).toBe(true);

    const again = await lifecycle.signDraft(draftId, { practitioner });
    expect(again.status).toBe('final');
    expect(server.all('DocumentReference')).toHaveLength(1);
    expect(provenanceKinds(server)).toEqual(['AU', 'CREATE']);
    expect(again.fhirId).toBe(server.all('DocumentReference')[0].id);
  });

  it('against the sandbox’s FHIR engine, with the default scopes: written once, found again', async () => {
    let launchPatient: string | undefined;
    const server = await startSandboxWithTokens({
      'service-token': { clientId: 'service', scopes: defaultBackendScopes.split(' '), backend: true },
      get 'clinician-token'() {
        return {
          clientId: 'review-app',
          scopes: defaultLaunchScopes.split(' '),
          patient: launchPatient,
          fhirUser: practitioner,
          backend: false,
        };
      },
    });
    cleanups.push(() => server.close());
    const chart = await seedChart(server.repository);
    launchPatient = chart.patient.id;
    const encounter = await create<Encounter>(server.repository, {
      resourceType: 'Encounter',
      status: 'finished',
      class: { code: 'AMB' },
      subject: { reference: `Patient/${chart.patient.id}` },
    });
    const serviceClient = new FhirClient({
      baseUrl: server.baseUrl,
      accessToken: staticAccessToken('service-token'),
    });
    const clinicianClient = serviceClient.withAccessToken(staticAccessToken('clinician-token'));
    const store = tempStore();
    const writer = new DraftNoteWriter(serviceClient, identifierSystem, { mode: 'hold', store });
    const { draft } = await writer.write(draftContentFor(chart), chart.patient, encounter);
    const lifecycle: DraftLifecycle = createDraftLifecycle({
      mode: 'hold',
      identifierSystem,
      store,
      client: clinicianClient,
      serviceClient,
      requestRegeneration: () => undefined,
    });
    const before = await store.get(draft.id as string);
    const signed = await lifecycle.signDraft(draft.id as string, { practitioner });
    const after = await store.get(draft.id as string);
    await store.replace(
      { ...(before as NonNullable<typeof before>), updatedAt: new Date(Date.now() + 60_000).toISOString() },
      after?.updatedAt as string,
    );
    const again = await lifecycle.signDraft(draft.id as string, { practitioner });
    expect(again.fhirId).toBe(signed.fhirId);

    const reader = new FhirClient({ baseUrl: server.baseUrl });
    const notes = await reader.search<DocumentReference>('DocumentReference', {
      encounter: `Encounter/${encounter.id}`,
    });
    expect(notes.map((note) => note.docStatus)).toEqual(['final']);
    const provenances = (await reader.search<Provenance>('Provenance', { _count: '1000' })).filter(
      (provenance) =>
        provenance.target.some((target) => target.reference === `DocumentReference/${signed.fhirId}`),
    );
    expect(provenances.map((provenance) => provenance.activity?.coding?.[0]?.code).sort()).toEqual([
      'AU',
      'CREATE',
    ]);
    // The AI Provenance keeps its profile: the clinician's default scopes cover Medplum's lookup.
    const ai = provenances.find((provenance) => provenance.activity?.coding?.[0]?.code === 'CREATE');
    expect(ai?.meta?.profile).toEqual([
      'http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance',
    ]);
    // One transaction with the clinician's token per sign-off.
    const transactions = server.requests.filter((request) => request.method === 'POST' && request.url === '');
    expect(transactions.map((request) => request.authorization)).toEqual([
      'Bearer clinician-token',
      'Bearer clinician-token',
    ]);
  });
});

describe('hold-mode sign-off without transactions (fhir.transactions: false)', () => {
  it('marks the draft signed only after both Provenances exist; signing again completes it without duplicates', async () => {
    const state = { refusing: true };
    const { server, store, lifecycle, draftId } = await heldDraftOnStandIn({ transactions: false, state });

    await expect(lifecycle.signDraft(draftId, { practitioner })).rejects.toMatchObject({ status: 403 });
    // No transactions on this server: the note and the AI Provenance went through one by one.
    expect(server.requests).not.toContain('POST /');
    expect(server.all('DocumentReference')).toHaveLength(1);
    expect(provenanceKinds(server)).toEqual(['CREATE']);
    expect((await store.get(draftId))?.status).toBe('preliminary');

    state.refusing = false;
    const signed = await lifecycle.signDraft(draftId, { practitioner });
    expect(signed.status).toBe('final');
    expect((await store.get(draftId))?.status).toBe('final');
    const notes = server.all('DocumentReference') as unknown as DocumentReference[];
    expect(notes).toHaveLength(1);
    expect(signed.fhirId).toBe(notes[0].id);
    expect(provenanceKinds(server)).toEqual(['AU', 'CREATE']);
    const versionedNote = `DocumentReference/${notes[0].id}/_history/${notes[0].meta?.versionId}`;
    for (const provenance of server.all('Provenance') as unknown as Provenance[])
      expect(provenance.target).toEqual([{ reference: versionedNote }]);
  });
});
