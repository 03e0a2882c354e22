import type { Encounter, Media, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { imageSectionHeading } from '../../agents/image-reading.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import type { RunningService } from '../../src/service.ts';
import {
  draftsFor,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from '../integration/service-harness.ts';
import {
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { halvesJpeg, imageInRequest } from './synthetic-images.ts';

/**
 * The whole service with `model.vision` set (issue 18): the sandbox EHR, a strict hospital, notifies the
 * service of a finished encounter; the service, a SMART Backend Services client that asked for the imaging
 * scopes itself, reads the patient's Media, has the scripted MedGemma 4B server describe it, and writes a draft
 * whose images section cites it. Text stays with the drafting engine (here the extractive one).
 */
describe('the service reads the record’s images when model.vision is set', () => {
  let vision: ScriptedInferenceServer;
  let service: RunningService;
  let fhir: FhirClient;

  beforeAll(async () => {
    vision = await startScriptedInferenceServer([], (body) => {
      const image = imageInRequest(body);
      return {
        content:
          image.leftMean > 200 && image.rightMean < 50
            ? 'Frontal chest radiograph. No clear abnormality seen.'
            : 'Unexpected image.',
      };
    });
    ({ service, fhir } = await startSandboxService({
      EHR_AGENT_SANDBOX__PATIENTS: '1',
      EHR_AGENT_MODEL__VISION__ENDPOINT_URL: vision.url,
    }));
  }, 120_000);

  afterAll(async () => {
    await service?.close();
    await vision?.close();
  });

  it('drafts a finished visit with a cited preliminary read of the patient’s image', async () => {
    // A visit of today: the service skips drafts for visits long past.
    const taken = new Date(Date.now() - 1_800_000).toISOString();
    const patient = (await fhir.create<Patient>({ resourceType: 'Patient', birthDate: '1955-05-05' }))
      .resource;
    const media = (
      await fhir.create<Media>({
        resourceType: 'Media',
        status: 'completed',
        subject: { reference: `Patient/${patient.id}` },
        modality: { text: 'chest X-ray' },
        createdDateTime: taken,
        content: { contentType: 'image/jpeg', data: halvesJpeg(1200, 900).toString('base64') },
      })
    ).resource;
    const encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patient.id}` },
        period: {
          start: new Date(Date.now() - 3_600_000).toISOString(),
          end: new Date(Date.now() - 60_000).toISOString(),
        },
      })
    ).resource;
    // The EHR's notification (the Backport IG's id-only shape), as the sandbox tests send it.
    expect(
      (await postNotification(service, idOnlyNotification(service.fhirBaseUrl, encounter.id as string, 1)))
        .status,
    ).toBe(200);
    await waitForIdleQueue(service, 90_000);
    const drafts = await draftsFor(fhir, encounter.id as string);
    expect(drafts).toHaveLength(1);
    const text = decodeBase64Text(
      drafts[0].content[0].attachment.data as string,
      'text/plain; charset=utf-8',
    );
    expect(text).toContain(imageSectionHeading);
    expect(text).toContain(
      `- [Media/${media.id}] chest X-ray, ${taken.slice(0, 10)}: Frontal chest radiograph. No clear abnormality seen.`,
    );
    expect(vision.requests).toHaveLength(1);
    expect(imageInRequest(vision.requests[0].body).width).toBe(896);
  }, 120_000);

  it('lets the sandbox review app ask for the image scopes its thumbnails and citation view read with', async () => {
    // The sandbox registers its own review client when no auth.launch is set: it must carry the imaging scopes.
    const response = await fetch(
      `${service.url}/smart/launch?iss=${encodeURIComponent(service.fhirBaseUrl)}`,
      {
        redirect: 'manual',
      },
    );
    expect(response.status).toBe(302);
    const scopes = new URL(response.headers.get('location') as string).searchParams.get('scope')?.split(' ');
    expect(scopes).toEqual(
      expect.arrayContaining(['patient/Media.r', 'patient/ImagingStudy.r', 'patient/DiagnosticReport.r']),
    );
  });
});
