import type { DocumentReference, Encounter } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import type { RunningService } from '../../src/service.ts';
import { startSandboxService, waitForIdleQueue } from '../integration/service-harness.ts';

/**
 * The modes as the running service wires them: hold mode keeps the pipeline's draft in the service
 * store (nothing in the EHR), a regeneration goes through the queue past the completed-work ledger
 * and supersedes the held draft, and the sign-off writes the note to the EHR as final.
 */
let service: RunningService;
let fhir: FhirClient;

beforeAll(async () => {
  ({ service, fhir } = await startSandboxService({ EHR_AGENT_DRAFTS__MODE: 'hold' }));
});
afterAll(async () => {
  await service?.close();
});

const ownDrafts = async (encounterId: string) =>
  (
    await fhir.search<DocumentReference>('DocumentReference', { encounter: `Encounter/${encounterId}` })
  ).filter((document) =>
    document.identifier?.some((identifier) => identifier.system === 'urn:ehr-draft-agent:draft'),
  );

describe('the service in hold mode', () => {
  it('holds, regenerates through the queue, and writes the note to the EHR only when signed', async () => {
    // The latest visit: drafts.maxAgeDays (14 days by default) skips the sandbox patients' older ones.
    const page = await fhir.searchPage('Encounter', { status: 'finished', _sort: '-date', _count: 1 });
    const encounter = page.entry?.[0]?.resource as Encounter;
    const patientId = encounter.subject?.reference?.split('/')[1] as string;
    await service.queue.enqueue([
      { encounterId: encounter.id as string, kind: 'progress-summary', source: 'test' },
    ]);
    await waitForIdleQueue(service);

    const [held] = await service.draftLifecycle.listDrafts(patientId);
    expect(held).toMatchObject({ mode: 'hold', status: 'preliminary', encounterId: encounter.id });
    expect(await ownDrafts(encounter.id as string)).toHaveLength(0);

    await service.draftLifecycle.regenerateDraft(held.id);
    await waitForIdleQueue(service);
    const drafts = await service.draftLifecycle.listDrafts(patientId);
    expect(drafts).toHaveLength(2);
    const fresh = drafts.find((draft) => draft.status === 'preliminary');
    expect(fresh?.replaces).toBe(held.id);
    expect(drafts.find((draft) => draft.id === held.id)?.status).toBe('superseded');

    const signed = await service.draftLifecycle.signDraft(fresh?.id as string, {
      practitioner: 'Practitioner/pr-1',
    });
    expect(signed.status).toBe('final');
    const written = await ownDrafts(encounter.id as string);
    expect(written).toHaveLength(1);
    expect(written[0]).toMatchObject({
      docStatus: 'final',
      authenticator: { reference: 'Practitioner/pr-1' },
    });
  });
});
