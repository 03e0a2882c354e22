import type { Provenance } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import type { RunningService } from '../../src/service.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from './service-harness.ts';

describe('the service on its embedded sandbox EHR: event in, draft note out', () => {
  let service: RunningService;
  let fhir: FhirClient;

  beforeAll(async () => {
    ({ service, fhir } = await startSandboxService());
  });
  const serviceUrl = () => service.url;
  afterAll(async () => {
    await service?.close();
  });

  it('answers health and readiness', async () => {
    expect((await fetch(`${service.url}/healthz`)).status).toBe(200);
    const ready = await fetch(`${service.url}/readyz`);
    expect(ready.status).toBe(200);
  });

  it('turns one encounter notified three times into exactly one cited preliminary draft with a Provenance', async () => {
    const encounter = finishedEncounter('sbx-0001', 'e2e-visit-1');
    // Seeded directly: no subscription event of the sandbox's own, only the three notifications below.
    await service.sandbox!.seed([encounter]);
    for (let eventNumber = 1; eventNumber <= 3; eventNumber++) {
      const response = await postNotification(
        service,
        idOnlyNotification(service.fhirBaseUrl, encounter.id!, eventNumber),
      );
      expect(response.status).toBe(200);
      await waitForIdleQueue(service);
    }

    const drafts = await draftsFor(fhir, encounter.id!);
    expect(drafts).toHaveLength(1);
    const [draft] = drafts;
    expect(draft).toMatchObject({
      status: 'current',
      docStatus: 'preliminary',
      type: { coding: [{ system: 'http://loinc.org', code: '34133-9' }] },
      category: [{ coding: [{ code: 'clinical-note' }] }],
      subject: { reference: 'Patient/sbx-0001' },
      context: { encounter: [{ reference: `Encounter/${encounter.id}` }] },
      meta: { security: [expect.objectContaining({ code: 'AIAST' })] },
    });
    expect(draft.author?.[0]?.reference).toMatch(/^Device\//);
    expect(draft.identifier?.[0]?.value).toContain(encounter.id);
    const attachment = draft.content[0].attachment;
    expect(attachment.contentType).toBe('text/plain; charset=utf-8');

    const text = decodeBase64Text(attachment.data!, attachment.contentType);
    const citations = [...new Set(citationsIn(text))];
    expect(citations.length).toBeGreaterThan(5);
    expect(citations).toContain(`Encounter/${encounter.id}`);
    // Every citation resolves to a resource of this patient on the server.
    for (const citation of citations) {
      const [type, id] = citation.split('/');
      const resource = await fhir.read(type as 'Condition', id);
      const owner = resource as { subject?: { reference?: string }; patient?: { reference?: string } };
      const reference =
        resource.resourceType === 'Patient'
          ? `Patient/${resource.id}`
          : (owner.subject ?? owner.patient)?.reference;
      expect(reference).toBe('Patient/sbx-0001');
    }

    const provenances = await fhir.search<Provenance>('Provenance', {
      // Servers differ in whether a plain reference matches a versioned target: ask for both.
      target: `DocumentReference/${draft.id},DocumentReference/${draft.id}/_history/${draft.meta?.versionId}`,
    });
    expect(provenances).toHaveLength(1);
    const sources = provenances[0].entity
      ?.filter((entity) => entity.role === 'source')
      .map((entity) => entity.what.reference);
    // Sources are the exact versions read.
    expect(sources?.length).toBeGreaterThan(5);
    for (const source of sources ?? []) expect(source).toMatch(/^[A-Za-z]+\/[^/]+\/_history\/[^/]+$/);
  });

  it('briefs a planned visit with the nudges the rules chose, each with its guideline and evidence', async () => {
    const planned = { ...finishedEncounter('sbx-0001', 'e2e-planned-1'), status: 'planned' as const };
    await service.sandbox!.seed([planned]);
    await postNotification(service, idOnlyNotification(service.fhirBaseUrl, planned.id!, 10));
    await waitForIdleQueue(service);
    const [briefing] = await draftsFor(fhir, planned.id!);
    const text = decodeBase64Text(briefing.content[0].attachment.data!, 'text/plain; charset=utf-8');
    expect(text).toMatch(/^## Pre-visit briefing/);
    // sbx-0001 is a diabetic aged 40-75 without a statin: the rule fires, the draft words it and cites the data.
    expect(text).toMatch(
      /Suggested actions:\n(- .*\n)*- .*statin.*\(ADA .*grade A; rule diabetes-statin v1\.0\.0\) \[(Condition|Patient)\//,
    );
  });

  it('serves the drafted nudges as CDS Hooks cards, and an encounter-start hook queues a briefing', async () => {
    const cdsCall = (service: string, body: unknown) =>
      fetch(`${serviceUrl()}/cds-services/${service}`, {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(body),
      });
    const drafted = await cdsCall('guideline-nudges-patient-view', {
      hook: 'patient-view',
      hookInstance: 'b1c2',
      context: { patientId: 'sbx-0001', userId: 'Practitioner/p1' },
    });
    expect(drafted.status).toBe(200);
    const { cards } = await drafted.json();
    const statinCard = cards.find((card: { summary: string }) => /statin/i.test(card.summary));
    expect(statinCard).toMatchObject({
      indicator: 'warning',
      source: { label: expect.stringMatching(/^ADA/) },
    });
    expect(statinCard.summary.length).toBeLessThan(140);
    expect(statinCard.links[0]).toMatchObject({ type: 'smart', url: `${serviceUrl()}/smart/launch` });

    const started = { ...finishedEncounter('sbx-0002', 'e2e-started-1'), status: 'arrived' as const };
    await service.sandbox!.seed([started]);
    const hook = await cdsCall('guideline-nudges-encounter-start', {
      hook: 'encounter-start',
      hookInstance: 'c3d4',
      context: { patientId: 'sbx-0002', encounterId: started.id, userId: 'Practitioner/p1' },
    });
    expect(hook.status).toBe(200);
    await waitForIdleQueue(service);
    const [briefing] = await draftsFor(fhir, started.id!);
    expect(briefing?.docStatus).toBe('preliminary');
  });

  it('drafts from the sandbox subscription alone when an encounter is finished through the FHIR API', async () => {
    const { resource: created } = await fhir.create({
      ...finishedEncounter('sbx-0002', 'ignored'),
      id: undefined,
      meta: undefined,
    });
    const deadline = Date.now() + 30_000;
    let drafts = await draftsFor(fhir, created.id!);
    while (drafts.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      drafts = await draftsFor(fhir, created.id!);
    }
    expect(drafts).toHaveLength(1);
  });

  it('refuses bad notifications with an OperationOutcome and queues nothing', async () => {
    await waitForIdleQueue(service);
    const before = await service.queue.counts();
    const authorization = { Authorization: `Bearer ${service.notifySecret}` };
    const cases: [RequestInit, number][] = [
      [{ headers: { ...authorization, 'Content-Type': 'application/fhir+json' }, body: '{not json' }, 400],
      [
        {
          headers: { ...authorization, 'Content-Type': 'application/fhir+json' },
          body: JSON.stringify({
            resourceType: 'Bundle',
            type: 'history',
            entry: [{ resource: { resourceType: 'Patient' } }],
          }),
        },
        400,
      ],
      [{ headers: { ...authorization, 'Content-Type': 'text/plain' }, body: 'hello' }, 415],
      [
        {
          headers: { ...authorization, 'Content-Type': 'application/fhir+json' },
          body: JSON.stringify({
            resourceType: 'Bundle',
            type: 'history',
            entry: [],
            padding: 'x'.repeat(1_100_000),
          }),
        },
        413,
      ],
      [
        {
          headers: { 'Content-Type': 'application/fhir+json' },
          body: JSON.stringify(idOnlyNotification(service.fhirBaseUrl, 'x', 1)),
        },
        401,
      ],
    ];
    for (const [init, status] of cases) {
      const response = await fetch(`${service.url}/notify`, { method: 'POST', ...init });
      expect(response.status, String(init.body).slice(0, 40)).toBe(status);
      expect((await response.json()).resourceType).toBe('OperationOutcome');
    }
    expect(await service.queue.counts()).toEqual(before);
  });

  it('keeps a job that keeps failing as a visible dead letter instead of dropping it', async () => {
    // An encounter whose patient does not exist: the Patient read fails with 404, which no retry can fix.
    await service.sandbox!.seed([finishedEncounter('no-such-patient', 'orphan-visit')]);
    await postNotification(service, idOnlyNotification(service.fhirBaseUrl, 'orphan-visit', 99));
    await waitForIdleQueue(service);
    const response = await fetch(`${service.url}/api/jobs?status=failed`, {
      headers: { Authorization: `Bearer ${service.adminSecret}` },
    });
    const listing = await response.json();
    // The job API is for operators: without the admin secret, with a wrong one, or with the notify secret
    // (which the sandbox EHR holds), nothing is listed.
    expect((await fetch(`${service.url}/api/jobs?status=failed`)).status).toBe(401);
    const wrongSecret = { headers: { Authorization: `Bearer ${service.adminSecret}x` } };
    expect((await fetch(`${service.url}/api/jobs?status=failed`, wrongSecret)).status).toBe(401);
    const notifySecret = { headers: { Authorization: `Bearer ${service.notifySecret}` } };
    expect((await fetch(`${service.url}/api/jobs?status=failed`, notifySecret)).status).toBe(401);
    expect(listing.jobs.map((job: { encounterId: string }) => job.encounterId)).toContain('orphan-visit');
  });
});
