import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import type { Device, DocumentReference, Encounter, Provenance } from 'fhir/r4.js';
import { afterAll, beforeAll, beforeEach, describe, expect, it } from 'vitest';
import {
  createDraftLifecycle,
  type DraftLifecycle,
  signedNoteText,
  signedNoteTitle,
} from '../../fhir/draft-lifecycle.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import type { DraftMode } from '../../fhir/draft-store.ts';
import { FhirClient, staticAccessToken } from '../../fhir/fhir-client.ts';
import { inlineNoteText } from '../../fhir/note-text.ts';
import { defaultLaunchScopes } from '../../src/config/auth-config.ts';
import { SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import type { FhirTestServer } from '../fhir/fhir-test-server.ts';
import { create, draftContentFor, type SeededChart, seedChart } from '../fhir/seed.ts';
import { startSandboxWithTokens } from './sandbox-with-tokens.ts';

/**
 * Every lifecycle transition, in all three modes, asserted as the FHIR resources it produces: in the
 * EHR (write; hold at sign-off) or in the service's store (hold, shadow).
 */
const identifierSystem = 'urn:ehr-draft-agent:draft';
const practitioner = 'Practitioner/pr9';
const shapesDirectory = path.resolve(import.meta.dirname, '../../../shared/reference/shapes');
const shape = (name: string) => JSON.parse(readFileSync(path.join(shapesDirectory, name), 'utf8'));
const haveShapes = existsSync(shapesDirectory);

let server: FhirTestServer;
let chart: SeededChart;
let directory: string;

beforeAll(async () => {
  // The service writes drafts with its backend grant; the clinician acts with exactly the review app's
  // default launch scopes, in the launch patient's compartment, as the sandbox enforces them.
  let launchPatient: string | undefined;
  server = await startSandboxWithTokens({
    'service-token': { clientId: 'service', scopes: ['system/*.cruds'], backend: true },
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
  chart = await seedChart(server.repository);
  launchPatient = chart.patient.id;
  directory = mkdtempSync(path.join(tmpdir(), 'draft-lifecycle-'));
});
afterAll(async () => {
  await server.close();
  rmSync(directory, { recursive: true, force: true });
});

interface Harness {
  writer: DraftNoteWriter;
  lifecycle: DraftLifecycle;
  store: SqliteDraftStore;
  regenerations: { encounterId: string; kind: string }[];
}

function harness(mode: DraftMode, now?: () => Date): Harness {
  const store = new SqliteDraftStore(
    path.join(directory, `${mode}-${Math.random().toString(36).slice(2)}.sqlite`),
  );
  const serviceClient = new FhirClient({
    baseUrl: server.baseUrl,
    accessToken: staticAccessToken('service-token'),
  });
  const clinicianClient = serviceClient.withAccessToken(staticAccessToken('clinician-token'));
  const regenerations: Harness['regenerations'] = [];
  const lifecycle = createDraftLifecycle({
    mode,
    identifierSystem,
    store,
    // As the service wires it: the AI Device a held draft names is the service's write, not the clinician's.
    serviceClient,
    requestRegeneration: (encounterId, kind) => void regenerations.push({ encounterId, kind }),
    ...(now ? { now } : {}),
  }).withClient(clinicianClient);
  return {
    writer: new DraftNoteWriter(serviceClient, identifierSystem, { mode, store }),
    lifecycle,
    store,
    regenerations,
  };
}

async function newEncounter(extra: Partial<Encounter> = {}): Promise<Encounter> {
  return create<Encounter>(server.repository, {
    resourceType: 'Encounter',
    status: 'finished',
    class: { code: 'AMB' },
    ...extra,
    subject: { reference: `Patient/${chart.patient.id}` },
    period: { start: '2026-11-20T09:00:00Z' },
  });
}

const signingDay = new Date('2026-11-27T15:30:00Z');
const unsignedHeading = '## Progress summary (AI draft - not final until signed by a clinician)';
const signedHeading =
  '## Progress summary (drafted with AI assistance; reviewed and signed by Dana Okafor, 2026-11-27)';

/** A draft as the extractive engine writes it: the heading that says it is not final yet. */
function headedContent(removedLines?: { line: string; reason: string; citations: string[] }[]) {
  const content = draftContentFor(chart);
  return {
    ...content,
    title: 'AI draft progress summary',
    text: `${unsignedHeading}\n${content.text.replace('## Progress summary\n', '')}`,
    ...(removedLines
      ? {
          verification: {
            cited: content.verification.cited,
            removed: removedLines.length,
            flagged: true,
            removedLines,
          },
        }
      : {}),
  };
}

const fhirWrites = () => server.requests.filter((request) => request.method !== 'GET');
const search = async <T>(type: string, query: Record<string, string>) =>
  (await new FhirClient({ baseUrl: server.baseUrl }).search(type as never, query)) as T[];
/** Every Provenance naming the document (any version): servers differ in matching versioned targets. */
const provenancesOf = async (documentId: string | undefined) =>
  (await search<Provenance>('Provenance', { _count: '1000' })).filter((provenance) =>
    provenance.target.some((target) => target.reference?.startsWith(`DocumentReference/${documentId}`)),
  );

function expectSignOffShape(provenance: Provenance, target: DocumentReference, revisionOf?: string) {
  expect(provenance.target[0].reference).toBe(
    target.meta?.versionId
      ? `DocumentReference/${target.id}/_history/${target.meta.versionId}`
      : `DocumentReference/${target.id}`,
  );
  expect(provenance.activity?.coding?.[0]).toMatchObject({ code: 'AU', display: 'authenticated' });
  expect(provenance.agent[0]).toMatchObject({
    type: { coding: [{ code: 'verifier' }] },
    who: { reference: practitioner },
  });
  expect(provenance.signature?.[0]).toMatchObject({
    who: { reference: practitioner },
    type: [{ code: '1.2.840.10065.1.12.1.5' }],
  });
  if (revisionOf) expect(provenance.entity).toEqual([{ role: 'revision', what: { reference: revisionOf } }]);
  if (haveShapes) {
    const reference = shape('signoff-provenance.json');
    const expectedKeys = Object.keys(reference).filter((key) => revisionOf || key !== 'entity');
    expect(
      Object.keys(provenance)
        .filter((key) => !['id', 'meta'].includes(key))
        .sort(),
    ).toEqual(expectedKeys.sort());
    expect(provenance.reason).toEqual(reference.reason);
    expect(provenance.activity).toEqual(reference.activity);
    expect(provenance.signature?.[0].type).toEqual(reference.signature[0].type);
  }
}

describe('write mode (the default): drafts live in the EHR', () => {
  let h: Harness;
  beforeEach(() => {
    h = harness('write');
  });

  it('writes a preliminary AI draft with AIAST, an AI-Device and an AI-Provenance, once', async () => {
    const first = await h.writer.write(draftContentFor(chart), chart.patient, chart.encounter);
    const again = await h.writer.write(draftContentFor(chart), chart.patient, chart.encounter);
    expect(first.created).toBe(true);
    expect(again).toMatchObject({ created: false, mode: 'write' });
    expect(again.draft.id).toBe(first.draft.id);
    const draft = first.draft;
    expect(draft).toMatchObject({ status: 'current', docStatus: 'preliminary' });
    expect(draft.meta?.security).toEqual([expect.objectContaining({ code: 'AIAST' })]);
    expect(draft.type?.coding?.[0].code).toBe('34133-9');

    const device = await new FhirClient({ baseUrl: server.baseUrl }).read<Device>(
      'Device',
      draft.author?.[0].reference?.split('/')[1] as string,
    );
    const provenances = await provenancesOf(draft.id);
    expect(provenances).toHaveLength(1);
    const provenance = provenances[0];
    expect(provenance.agent[0].who?.reference).toBe(`Device/${device.id}`);
    // Written in one transaction with the draft, the Provenance names it by the entry's urn:uuid, which the
    // server resolves to `DocumentReference/<id>`: the version is not known before the server assigns it.
    expect(provenance.target[0].reference).toBe(`DocumentReference/${draft.id}`);
    // Sources at the exact versions read; the prompt as a derivation.
    expect(provenance.entity).toEqual(
      expect.arrayContaining([
        {
          role: 'source',
          what: {
            reference: `Condition/${chart.conditions[0].id}/_history/${chart.conditions[0].meta?.versionId}`,
          },
        },
        {
          role: 'source',
          what: {
            reference: `Observation/${chart.observation.id}/_history/${chart.observation.meta?.versionId}`,
          },
        },
        { role: 'derivation', what: { reference: '#prompt' } },
      ]),
    );
    if (haveShapes) {
      const aiProvenance = shape('ai-provenance.json');
      expect(
        Object.keys(provenance)
          .filter((key) => key !== 'id')
          .sort(),
      ).toEqual(Object.keys(aiProvenance).sort());
      expect(provenance.meta?.profile).toEqual(aiProvenance.meta.profile);
      const { id: _id, ...prompt } = (provenance.contained ?? [])[0] as DocumentReference;
      const { id: _shapeId, ...shapePrompt } = aiProvenance.contained[0];
      expect(Object.keys(prompt).sort()).toEqual(Object.keys(shapePrompt).sort());
      expect(prompt.type).toEqual(shapePrompt.type);
      expect(Object.keys(prompt.content[0].attachment).sort()).toEqual(['contentType', 'data']);
      expect(provenance.reason).toEqual(aiProvenance.reason);
      expect(provenance.activity).toEqual(aiProvenance.activity);
      expect(provenance.agent[0].type).toEqual(aiProvenance.agent[0].type);
      expect(provenance.agent[0].role).toEqual(aiProvenance.agent[0].role);
      const aiDevice = shape('ai-device.json');
      expect(device.meta?.profile).toEqual(aiDevice.meta.profile);
      expect(device.extension).toEqual(aiDevice.extension);
      expect(device.type).toEqual(aiDevice.type);
      expect(device.deviceName?.[0].type).toBe('model-name');
    }
  });

  it('lists, edits and signs with the clinician token: final, authenticator, author, sign-off Provenance', async () => {
    const encounter = await newEncounter();
    const { draft } = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    const listed = await h.lifecycle.listDrafts(chart.patient.id as string);
    const view = listed.find((candidate) => candidate.id === draft.id);
    expect(view).toMatchObject({
      patientId: chart.patient.id,
      encounterId: encounter.id,
      kind: 'progress-summary',
      status: 'preliminary',
      mode: 'write',
      flagged: false,
      citations: [`Condition/${chart.conditions[0].id}`, `Observation/${chart.observation.id}`],
    });

    server.requests.length = 0;
    const editedText = `${view?.text}- Reviewed by clinician [Condition/${chart.conditions[1].id}]\n`;
    const edited = await h.lifecycle.editDraft(draft.id as string, editedText, practitioner);
    expect(edited).toMatchObject({ status: 'preliminary', text: editedText });
    expect(edited.version).not.toBe(draft.meta?.versionId);
    const editProvenance = (await provenancesOf(draft.id)).find(
      (candidate) => candidate.activity?.coding?.[0].code === 'UPDATE',
    );
    expect(editProvenance).toMatchObject({
      agent: [{ who: { reference: practitioner } }],
      entity: [
        {
          role: 'revision',
          what: { reference: `DocumentReference/${draft.id}/_history/${draft.meta?.versionId}` },
        },
      ],
    });

    const signed = await h.lifecycle.signDraft(draft.id as string, { practitioner });
    expect(signed).toMatchObject({ status: 'final', signedBy: practitioner, text: editedText });
    const document = await new FhirClient({ baseUrl: server.baseUrl }).read<DocumentReference>(
      'DocumentReference',
      draft.id as string,
    );
    expect(document.docStatus).toBe('final');
    expect(document.authenticator).toEqual({ reference: practitioner });
    expect(document.author?.map((author) => author.reference)).toEqual([
      draft.author?.[0].reference,
      practitioner,
    ]);
    expect(inlineNoteText(document)).toBe(editedText);
    const signOff = (await provenancesOf(draft.id)).find(
      (candidate) => candidate.activity?.coding?.[0].code === 'AU',
    ) as Provenance;
    expectSignOffShape(signOff, document, `DocumentReference/${draft.id}/_history/${edited.version}`);
    // Every write the review made carried the clinician's own token, never the service's.
    expect(fhirWrites().length).toBeGreaterThanOrEqual(4);
    for (const write of fhirWrites()) expect(write.authorization).toBe('Bearer clinician-token');

    await expect(h.lifecycle.signDraft(draft.id as string, { practitioner })).rejects.toMatchObject({
      status: 409,
    });
    await expect(h.lifecycle.editDraft(draft.id as string, 'x', practitioner)).rejects.toMatchObject({
      status: 409,
    });
  });

  it('rejects: entered-in-error with the reason, recorded as Provenance', async () => {
    const { draft } = await h.writer.write(draftContentFor(chart), chart.patient, await newEncounter());
    const rejected = await h.lifecycle.rejectDraft(draft.id as string, {
      practitioner,
      reason: 'Wrong encounter summarised',
    });
    expect(rejected.status).toBe('entered-in-error');
    const document = await new FhirClient({ baseUrl: server.baseUrl }).read<DocumentReference>(
      'DocumentReference',
      draft.id as string,
    );
    expect(document.status).toBe('entered-in-error');
    expect(document.docStatus).toBe('preliminary');
    expect(document.extension?.[0].valueString).toBe('Wrong encounter summarised');
    const provenance = (await provenancesOf(draft.id)).find(
      (candidate) => candidate.activity?.coding?.[0].code === 'NULLIFY',
    );
    expect(provenance?.reason).toEqual(expect.arrayContaining([{ text: 'Wrong encounter summarised' }]));
    await expect(h.lifecycle.signDraft(draft.id as string, { practitioner })).rejects.toMatchObject({
      status: 409,
    });
  });

  it('regenerates: the new draft relatesTo replaces the old, which becomes superseded', async () => {
    const encounter = await newEncounter();
    const { draft: old } = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    const requested = await h.lifecycle.regenerateDraft(old.id as string);
    expect(requested).toMatchObject({ id: old.id, regenerationRequested: true });
    expect(h.regenerations).toEqual([{ encounterId: encounter.id, kind: 'progress-summary' }]);

    // The queued job runs the pipeline again; the writer sees the pending regeneration.
    const fresh = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect(fresh.created).toBe(true);
    expect(fresh.draft.id).not.toBe(old.id);
    expect(fresh.draft.relatesTo).toEqual([
      { code: 'replaces', target: { reference: `DocumentReference/${old.id}` } },
    ]);
    expect(fresh.draft.identifier?.[0].value).toMatch(/:g1$/);
    expect((await h.lifecycle.getDraft(old.id as string))?.status).toBe('superseded');
    expect((await h.lifecycle.getDraft(fresh.draft.id as string))?.status).toBe('preliminary');
    // A repeated event afterwards finds the new draft, not a third one.
    const repeated = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect(repeated).toMatchObject({ created: false });
    expect(repeated.draft.id).toBe(fresh.draft.id);
    await expect(h.lifecycle.regenerateDraft(old.id as string)).rejects.toMatchObject({ status: 409 });
  });

  it('signs with the clinician’s name in the heading: the signed text no longer says it is unsigned', async () => {
    const named = harness('write', () => signingDay);
    const { draft } = await named.writer.write(headedContent(), chart.patient, await newEncounter());
    const before = await named.lifecycle.getDraft(draft.id as string);
    expect(before?.text).toContain('not final until signed');
    expect(before?.title).toBe('AI draft progress summary');

    const signed = await named.lifecycle.signDraft(draft.id as string, {
      practitioner,
      practitionerName: 'Dana Okafor',
    });
    const document = await new FhirClient({ baseUrl: server.baseUrl }).read<DocumentReference>(
      'DocumentReference',
      draft.id as string,
    );
    const text = inlineNoteText(document) ?? '';
    expect(text.split('\n')[0]).toBe(signedHeading);
    expect(text).not.toContain('not final until signed');
    // Everything below the heading is the text as reviewed.
    expect(text.split('\n').slice(1)).toEqual(before?.text.split('\n').slice(1));
    expect(document.docStatus).toBe('final');
    expect(document.authenticator).toEqual({ reference: practitioner, display: 'Dana Okafor' });
    expect(document.content?.[0].attachment.title).toBe('Progress summary (drafted with AI assistance)');
    expect(signed).toMatchObject({
      status: 'final',
      signedBy: practitioner,
      signedByName: 'Dana Okafor',
      title: 'Progress summary (drafted with AI assistance)',
    });
    expect(signed.text).not.toContain('not final until signed');

    // Without a name (no Practitioner read scope) the heading still stops saying "not final"; text the
    // clinician typed is signed with the heading rewritten too.
    const { draft: other } = await named.writer.write(headedContent(), chart.patient, await newEncounter());
    const typed = `${unsignedHeading}\n- Reviewed in clinic [Condition/${chart.conditions[0].id}]`;
    const anonymous = await named.lifecycle.signDraft(other.id as string, { practitioner, text: typed });
    expect(anonymous.text).toBe(
      `## Progress summary (drafted with AI assistance; reviewed and signed by a clinician, 2026-11-27)\n- Reviewed in clinic [Condition/${chart.conditions[0].id}]`,
    );
    expect(anonymous.signedByName).toBeUndefined();
  });

  it('records the visit in words and the removed statements with the draft; sign-off leaves them out of the chart', async () => {
    const encounter = await newEncounter({
      type: [
        { coding: [{ system: 'http://snomed.info/sct', code: '390906007', display: 'Follow-up encounter' }] },
      ],
    });
    const removedLines = [
      { line: '- Patient reports chest pain', reason: 'no-citation', citations: [] },
      {
        line: '- Creatinine 2.1 [Observation/not-read]',
        reason: 'unknown-citation',
        citations: ['Observation/not-read'],
      },
      {
        line: '- Glucose 9.1 [Observation/someone-else]',
        reason: 'other-patient',
        citations: ['Observation/someone-else'],
      },
    ];
    const { draft } = await h.writer.write(headedContent(removedLines), chart.patient, encounter);
    expect(draft.context?.encounter?.[0]).toEqual({
      reference: `Encounter/${encounter.id}`,
      display: 'Follow-up encounter',
    });
    const view = await h.lifecycle.getDraft(draft.id as string);
    expect(view).toMatchObject({
      flagged: true,
      encounterLabel: { type: 'Follow-up encounter', start: '2026-11-20T09:00:00Z' },
    });
    expect(view?.removedStatements).toEqual([
      { line: '- Patient reports chest pain', reason: 'no-citation' },
      {
        line: '- Creatinine 2.1 [Observation/not-read]',
        reason: 'unknown-citation',
        citations: ['Observation/not-read'],
      },
      // What cited another patient's record is not repeated to this patient's reviewer.
      { line: '', reason: 'other-patient' },
    ]);

    const signed = await h.lifecycle.signDraft(draft.id as string, { practitioner });
    expect(signed.removedStatements).toBeUndefined();
    const document = await new FhirClient({ baseUrl: server.baseUrl }).read<DocumentReference>(
      'DocumentReference',
      draft.id as string,
    );
    expect(document.extension ?? []).toEqual([]);
  });

  it('does not show notes that are not its drafts, and refuses a bad practitioner', async () => {
    expect(await h.lifecycle.getDraft(chart.latinNote.id as string)).toBeUndefined();
    const { draft } = await h.writer.write(draftContentFor(chart), chart.patient, await newEncounter());
    await expect(
      h.lifecycle.signDraft(draft.id as string, { practitioner: 'Patient/p1' }),
    ).rejects.toMatchObject({ status: 400 });
  });
});

describe('the signed wording', () => {
  it('rewrites each engine’s draft marker in headings and titles, and nothing else', () => {
    const date = new Date('2026-11-27T23:59:00Z');
    expect(
      signedNoteText(
        '## Pre-visit briefing (AI draft – not final until signed by a clinician)\n- BP 150 [Observation/o1]',
        {
          name: 'Dr. Dana\nOkafor [Patient/p2]',
          date,
        },
      ),
    ).toBe(
      '## Pre-visit briefing (drafted with AI assistance; reviewed and signed by Dr. Dana Okafor Patient/p2, 2026-11-27)\n- BP 150 [Observation/o1]',
    );
    // A statement that quotes the marker is not a heading: it stays as the clinician left it.
    expect(signedNoteText('- Note said (AI draft - not final until signed by a clinician)', { date })).toBe(
      '- Note said (AI draft - not final until signed by a clinician)',
    );
    expect(signedNoteTitle('AI draft pre-visit briefing')).toBe(
      'Pre-visit briefing (drafted with AI assistance)',
    );
    expect(signedNoteTitle('Progress note summary (AI draft, needs review)')).toBe(
      'Progress note summary (drafted with AI assistance)',
    );
    expect(signedNoteTitle('Discharge letter')).toBe('Discharge letter');
  });
});

describe('hold mode: drafts stay in the service until sign-off, then go to the EHR as final', () => {
  it('keeps drafts out of the EHR, then writes the signed note, its Device and both Provenances', async () => {
    const h = harness('hold');
    const encounter = await newEncounter();
    server.requests.length = 0;
    const written = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect(written).toMatchObject({ created: true, mode: 'hold' });
    expect(fhirWrites()).toHaveLength(0);
    expect((await h.writer.write(draftContentFor(chart), chart.patient, encounter)).created).toBe(false);

    const [view] = (await h.lifecycle.listDrafts(chart.patient.id as string)).filter(
      (draft) => draft.mode === 'hold',
    );
    expect(view).toMatchObject({ id: written.draft.id, status: 'preliminary', encounterId: encounter.id });
    const edited = await h.lifecycle.editDraft(view.id, `${view.text}- edited\n`, practitioner);
    expect(edited.text).toContain('- edited');
    expect(fhirWrites()).toHaveLength(0);
    expect((await h.store.get(view.id))?.events.map((event) => event.activity?.coding?.[0].code)).toEqual([
      'UPDATE',
    ]);

    const signed = await h.lifecycle.signDraft(view.id, {
      practitioner,
      text: 'Final text [Condition/c1]\n',
    });
    expect(signed).toMatchObject({ status: 'final', mode: 'hold', text: 'Final text [Condition/c1]\n' });
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const document = await client.read<DocumentReference>('DocumentReference', signed.fhirId as string);
    expect(document).toMatchObject({
      status: 'current',
      docStatus: 'final',
      authenticator: { reference: practitioner },
    });
    expect(document.meta?.security?.[0].code).toBe('AIAST');
    expect(document.relatesTo).toBeUndefined();
    expect(inlineNoteText(document)).toBe('Final text [Condition/c1]\n');
    const [deviceReference, signer] = document.author?.map((author) => author.reference) ?? [];
    expect(signer).toBe(practitioner);
    const device = await client.read<Device>('Device', deviceReference?.split('/')[1] as string);
    expect(device.type?.coding?.[0].code).toBe('Artificial-Intelligence');
    const provenances = await provenancesOf(document.id);
    const ai = provenances.find((provenance) => provenance.activity?.coding?.[0].code === 'CREATE');
    expect(ai?.agent[0].who?.reference).toBe(deviceReference);
    // Written in one transaction with the note, both target it by its fullUrl, which the server resolves
    // to the note's plain reference: the version created in that same transaction.
    expect(ai?.target[0].reference).toBe(`DocumentReference/${document.id}`);
    expectSignOffShape(
      provenances.find((provenance) => provenance.activity?.coding?.[0].code === 'AU') as Provenance,
      { ...document, meta: {} },
    );
    // The note and both Provenances: one transaction with the clinician's own token; only the AI Device is
    // the service's write.
    const writes = fhirWrites().filter((write) => !write.url.startsWith('Device'));
    expect(writes.filter((write) => write.method === 'POST' && write.url === '')).toHaveLength(1);
    for (const write of writes) expect(write.authorization).toBe('Bearer clinician-token');
    for (const write of fhirWrites().filter((write) => write.url.startsWith('Device')))
      expect(write.authorization).toBe('Bearer service-token');
  });

  it('writes the signed note with the heading rewritten and the signer named, in the EHR and the store', async () => {
    const h = harness('hold', () => signingDay);
    const { draft } = await h.writer.write(headedContent(), chart.patient, await newEncounter());
    const signed = await h.lifecycle.signDraft(draft.id as string, {
      practitioner,
      practitionerName: 'Dana Okafor',
    });
    const document = await new FhirClient({ baseUrl: server.baseUrl }).read<DocumentReference>(
      'DocumentReference',
      signed.fhirId as string,
    );
    const text = inlineNoteText(document) ?? '';
    expect(text.split('\n')[0]).toBe(signedHeading);
    expect(text).not.toContain('not final until signed');
    expect(document.authenticator).toEqual({ reference: practitioner, display: 'Dana Okafor' });
    expect(signed.text.split('\n')[0]).toBe(signedHeading);
    expect(signed).toMatchObject({
      signedByName: 'Dana Okafor',
      title: 'Progress summary (drafted with AI assistance)',
    });
    expect((await h.store.get(draft.id as string))?.text).not.toContain('not final until signed');
  });

  it('rejects and regenerates inside the store, never touching the EHR', async () => {
    const h = harness('hold');
    const encounter = await newEncounter();
    server.requests.length = 0;
    const { draft } = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    await h.lifecycle.regenerateDraft(draft.id as string);
    const fresh = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect(fresh.draft.relatesTo?.[0]).toEqual({
      code: 'replaces',
      target: { reference: `DocumentReference/${draft.id}` },
    });
    expect(await h.lifecycle.getDraft(draft.id as string)).toMatchObject({
      status: 'superseded',
      supersededBy: fresh.draft.id,
    });
    const rejected = await h.lifecycle.rejectDraft(fresh.draft.id as string, {
      practitioner,
      reason: 'Not useful',
    });
    expect(rejected.status).toBe('entered-in-error');
    const stored = await h.store.get(fresh.draft.id as string);
    expect(stored?.document.status).toBe('entered-in-error');
    expect(stored?.events[0].reason).toEqual(expect.arrayContaining([{ text: 'Not useful' }]));
    expect(fhirWrites()).toHaveLength(0);
  });
});

describe('shadow mode: drafts are made and stored, never written', () => {
  it('goes through every transition without a single write to the EHR', async () => {
    const h = harness('shadow');
    const encounter = await newEncounter();
    server.requests.length = 0;
    const first = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect(first.mode).toBe('shadow');
    await h.lifecycle.editDraft(first.draft.id as string, 'Edited [Condition/c1]\n', practitioner);
    await h.lifecycle.regenerateDraft(first.draft.id as string);
    const second = await h.writer.write(draftContentFor(chart), chart.patient, encounter);
    expect((await h.lifecycle.getDraft(first.draft.id as string))?.status).toBe('superseded');
    const signed = await h.lifecycle.signDraft(second.draft.id as string, { practitioner });
    expect(signed).toMatchObject({ status: 'final', mode: 'shadow', signedBy: practitioner });
    expect(signed.fhirId).toBeUndefined();
    const stored = await h.store.get(second.draft.id as string);
    expect(stored?.document).toMatchObject({
      docStatus: 'final',
      authenticator: { reference: practitioner },
    });
    expect(stored?.document.author?.map((author) => author.reference)).toContain(practitioner);
    expectSignOffShape(stored?.events.at(-1) as Provenance, {
      ...(stored?.document as DocumentReference),
      meta: {},
    });
    const third = await h.writer.write(draftContentFor(chart), chart.patient, await newEncounter());
    await h.lifecycle.rejectDraft(third.draft.id as string, { practitioner, reason: 'Duplicate' });
    expect((await h.store.get(third.draft.id as string))?.status).toBe('entered-in-error');
    expect(fhirWrites()).toHaveLength(0);
  });
});

describe('the service can never finalise a draft by itself', () => {
  it('refuses a hold or shadow writer without a store, and a final note from the writer path', async () => {
    expect(
      () =>
        new DraftNoteWriter(new FhirClient({ baseUrl: server.baseUrl }), identifierSystem, { mode: 'hold' }),
    ).toThrow();
    const client = new FhirClient({ baseUrl: server.baseUrl });
    const { draft } = await harness('write').writer.write(
      draftContentFor(chart),
      chart.patient,
      await newEncounter(),
    );
    await expect(client.update({ ...draft, docStatus: 'final' })).rejects.toMatchObject({ status: 403 });
  });
});
