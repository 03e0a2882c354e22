import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import type { ImagingStudy } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readImages } from '../../agents/image-reading.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { DicomWebClient } from '../../fhir/imaging/dicomweb-client.ts';
import { type ImageSourceOptions, readRecordImages } from '../../fhir/imaging/record-images.ts';
import { PatientScopedReader } from '../../fhir/patient-scope.ts';
import { draftsApiRouter } from '../../src/http/drafts-api-routes.ts';
import type { LaunchContext } from '../../src/http/smart-launch.ts';
import { silentLogger } from '../../src/log.ts';
import { OpenAiCompatibleVisionProvider } from '../../src/model/vision-provider.ts';
import { createMemoryDraftLifecycle } from '../review/memory-draft-lifecycle.ts';
import { type FhirStandIn, startFhirStandIn } from '../support/fhir-stand-in.ts';
import {
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { dicomFromJpeg, type OrthancServer, orthancAvailable, startOrthanc } from '../support/orthanc.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { halvesJpeg, imageInRequest } from './synthetic-images.ts';

/**
 * ImagingStudies read from a real PACS: Debian's Orthanc with its DICOMweb plugin, holding DICOM
 * Secondary Captures the test makes from synthetic JPEGs with img2dcm. The FHIR side is the stand-in
 * server; the vision model a scripted OpenAI-compatible server that checks the rendered image it got.
 */
const patientId = 'pacs-patient';
const mrn = 'MRN-PACS-7';
const limits = { maxInputBytes: 20_000_000, maxInputPixels: 60_000_000, maxDimension: 896 };

function imagingStudy(
  id: string,
  uids: { study: string; series: string; instance: string },
  extra: Partial<ImagingStudy> = {},
): ImagingStudy {
  return {
    resourceType: 'ImagingStudy',
    id,
    status: 'available',
    subject: { reference: `Patient/${patientId}` },
    started: '2024-05-01T10:00:00Z',
    identifier: [{ system: 'urn:dicom:uid', value: `urn:oid:${uids.study}` }],
    series: [
      {
        uid: uids.series,
        modality: { system: 'http://dicom.nema.org/resources/ontology/DCM', code: 'CR' },
        instance: [{ uid: uids.instance, sopClass: { code: '1.2.840.10008.5.1.4.1.1.7' } }],
      },
    ],
    ...extra,
  };
}

describe.skipIf(!orthancAvailable)('ImagingStudy images from a real PACS over DICOMweb (Orthanc)', () => {
  let orthanc: OrthancServer;
  let standIn: FhirStandIn;
  let vision: ScriptedInferenceServer;
  const description = 'Frontal chest radiograph. The left half is bright and the right half is dark.';

  beforeAll(async () => {
    orthanc = await startOrthanc();
    standIn = await startFhirStandIn();
    vision = await startScriptedInferenceServer([], { content: description });
    const record = buildPatientRecord({ patientId, noteCount: 0 });
    standIn.write({ ...record.patient, identifier: [{ system: 'urn:test:mrn', value: mrn }] });
    // The patient's own study: a 1200 x 900 picture.
    await orthanc.store(
      dicomFromJpeg(halvesJpeg(1200, 900), {
        patientId: mrn,
        studyInstanceUid: '1.2.826.0.1.1',
        seriesInstanceUid: '1.2.826.0.1.1.1',
        sopInstanceUid: '1.2.826.0.1.1.1.1',
        modality: 'CR',
      }),
    );
    // A study of this patient whose object has no pixel data.
    await orthanc.store(
      dicomFromJpeg(
        halvesJpeg(64, 64),
        {
          patientId: mrn,
          studyInstanceUid: '1.2.826.0.1.2',
          seriesInstanceUid: '1.2.826.0.1.2.1',
          sopInstanceUid: '1.2.826.0.1.2.1.1',
        },
        true,
      ),
    );
    // A study the PACS holds for another patient (the FHIR ImagingStudy wrongly names ours).
    await orthanc.store(
      dicomFromJpeg(halvesJpeg(64, 64), {
        patientId: 'MRN-SOMEONE-ELSE',
        studyInstanceUid: '1.2.826.0.1.3',
        seriesInstanceUid: '1.2.826.0.1.3.1',
        sopInstanceUid: '1.2.826.0.1.3.1.1',
      }),
    );
  }, 60_000);

  afterAll(async () => {
    await vision?.close();
    await standIn?.close();
    await orthanc?.stop();
  });

  function sources(
    pacs: Partial<{ timeoutMs: number; baseUrl: string; allowed: string[] }> = {},
  ): ImageSourceOptions {
    const baseUrl = pacs.baseUrl ?? orthanc.dicomWebUrl;
    return {
      limits,
      maxImages: 10,
      pacs: {
        client: new DicomWebClient({
          allowedBaseUrls: pacs.allowed ?? [baseUrl],
          timeoutMs: pacs.timeoutMs ?? 5000,
          maxResponseBytes: limits.maxInputBytes,
        }),
        defaultBaseUrl: baseUrl,
      },
    };
  }

  async function readFromStandIn(studies: ImagingStudy[], options: ImageSourceOptions) {
    for (const study of standIn.all('ImagingStudy')) standIn.remove('ImagingStudy', study.id as string);
    for (const study of studies) standIn.write(study as never);
    const reader = new PatientScopedReader(new FhirClient({ baseUrl: standIn.url }), patientId);
    const record = buildPatientRecord({ patientId, noteCount: 0 });
    record.patient = await reader.read('Patient', patientId);
    return { record, found: await readRecordImages(reader, record, options) };
  }

  it('reads the patient’s study rendered by the PACS, downscaled, and the draft line cites the ImagingStudy', async () => {
    const study = imagingStudy('chest-1', {
      study: '1.2.826.0.1.1',
      series: '1.2.826.0.1.1.1',
      instance: '1.2.826.0.1.1.1.1',
    });
    const { found } = await readFromStandIn([study], sources());
    expect(found.images).toHaveLength(1);
    expect(found.images[0].problem).toBeUndefined();
    expect([found.images[0].image?.width, found.images[0].image?.height]).toEqual([896, 672]);
    expect(found.images[0].image?.original).toMatchObject({ width: 1200, height: 900 });
    expect(found.resources.map((resource) => `${resource.resourceType}/${resource.id}`)).toEqual([
      'ImagingStudy/chest-1',
    ]);

    const before = vision.requests.length;
    const reading = await readImages(found.images, `Patient/${patientId}`, {
      vision: new OpenAiCompatibleVisionProvider({
        endpointUrl: vision.url,
        model: 'google/medgemma-4b-it',
        timeoutMs: 5000,
        retries: 0,
      }),
      prompt: PromptLibrary.load().get('image-preliminary-read'),
      maxOutputTokens: 200,
      logger: silentLogger(),
    });
    const sent = imageInRequest(vision.requests[before].body);
    expect([sent.width, sent.height]).toEqual([896, 672]);
    expect(sent.leftMean).toBeGreaterThan(200);
    expect(sent.rightMean).toBeLessThan(50);
    expect(sent.prompt).toContain('modality CR');
    expect(reading.lines[1]).toBe(`- [ImagingStudy/chest-1] CR, 2024-05-01: ${description}`);
  });

  it('follows the study’s Endpoint to a configured PACS, and refuses one pointing anywhere else before any request', async () => {
    const requestsToElsewhere: string[] = [];
    const elsewhere: Server = createServer((request, response) => {
      requestsToElsewhere.push(request.url ?? '');
      response.writeHead(200, { 'content-type': 'image/jpeg' }).end(halvesJpeg(32, 32));
    });
    await new Promise<void>((resolve) => elsewhere.listen(0, '127.0.0.1', resolve));
    const elsewhereUrl = `http://127.0.0.1:${(elsewhere.address() as AddressInfo).port}/dicom-web`;
    try {
      standIn.write({
        resourceType: 'Endpoint',
        id: 'pacs',
        status: 'active',
        address: orthanc.dicomWebUrl,
      } as never);
      standIn.write({
        resourceType: 'Endpoint',
        id: 'rogue',
        status: 'active',
        address: elsewhereUrl,
      } as never);
      const uids = { study: '1.2.826.0.1.1', series: '1.2.826.0.1.1.1', instance: '1.2.826.0.1.1.1.1' };
      const { found } = await readFromStandIn(
        [
          imagingStudy('via-endpoint', uids, { endpoint: [{ reference: 'Endpoint/pacs' }] }),
          imagingStudy('via-rogue', uids, { endpoint: [{ reference: 'Endpoint/rogue' }] }),
        ],
        // No default base: only the Endpoint can name the PACS.
        {
          ...sources(),
          pacs: {
            client: new DicomWebClient({
              allowedBaseUrls: [orthanc.dicomWebUrl],
              timeoutMs: 5000,
              maxResponseBytes: 1e7,
            }),
          },
        },
      );
      const byCitation = new Map(found.images.map((image) => [image.citation, image]));
      expect(byCitation.get('ImagingStudy/via-endpoint')?.image?.width).toBe(896);
      expect(byCitation.get('ImagingStudy/via-rogue')?.problem?.kind).toBe('refused');
      expect(requestsToElsewhere).toEqual([]);
    } finally {
      elsewhere.closeAllConnections();
      await new Promise((resolve) => elsewhere.close(resolve));
    }
  });

  it('says so for DICOM without pixel data and refuses a study the PACS holds for another patient', async () => {
    const { found } = await readFromStandIn(
      [
        imagingStudy('no-pixels', {
          study: '1.2.826.0.1.2',
          series: '1.2.826.0.1.2.1',
          instance: '1.2.826.0.1.2.1.1',
        }),
        imagingStudy('someone-else', {
          study: '1.2.826.0.1.3',
          series: '1.2.826.0.1.3.1',
          instance: '1.2.826.0.1.3.1.1',
        }),
        imagingStudy('not-there', {
          study: '1.2.826.0.1.9',
          series: '1.2.826.0.1.9.1',
          instance: '1.2.826.0.1.9.1.1',
        }),
      ],
      sources(),
    );
    const problems = Object.fromEntries(found.images.map((image) => [image.citation, image.problem?.kind]));
    expect(problems).toEqual({
      'ImagingStudy/no-pixels': 'no-pixel-data',
      'ImagingStudy/someone-else': 'refused',
      'ImagingStudy/not-there': 'not-in-pacs',
    });
    expect(found.images.every((image) => image.image === undefined)).toBe(true);
    // Nothing unread is citable as read: the lines say the images were not read.
    const reading = await readImages(found.images, `Patient/${patientId}`, {
      vision: new OpenAiCompatibleVisionProvider({
        endpointUrl: vision.url,
        model: 'google/medgemma-4b-it',
        timeoutMs: 5000,
        retries: 0,
      }),
      prompt: PromptLibrary.load().get('image-preliminary-read'),
      maxOutputTokens: 200,
      logger: silentLogger(),
    });
    expect(reading.lines.find((line) => line.includes('[ImagingStudy/no-pixels]'))).toContain(
      'no pixel data',
    );
    expect(reading.lines.find((line) => line.includes('[ImagingStudy/someone-else]'))).toContain(
      'could not be confirmed as this patient’s image',
    );
  });

  it('a slow PACS is given up on once per draft, and the draft goes on without its images', async () => {
    const held: string[] = [];
    // Accepts connections and never answers, as a PACS stuck under load.
    const stuck: Server = createServer((request) => {
      held.push(request.url ?? '');
    });
    await new Promise<void>((resolve) => stuck.listen(0, '127.0.0.1', resolve));
    const stuckUrl = `http://127.0.0.1:${(stuck.address() as AddressInfo).port}/dicom-web`;
    try {
      const startedAt = Date.now();
      const { found } = await readFromStandIn(
        [
          imagingStudy('slow-1', {
            study: '1.2.826.0.1.1',
            series: '1.2.826.0.1.1.1',
            instance: '1.2.826.0.1.1.1.1',
          }),
          imagingStudy('slow-2', {
            study: '1.2.826.0.1.2',
            series: '1.2.826.0.1.2.1',
            instance: '1.2.826.0.1.2.1.1',
          }),
        ],
        sources({ baseUrl: stuckUrl, timeoutMs: 400 }),
      );
      expect(found.images.map((image) => image.problem?.kind)).toEqual([
        'pacs-unavailable',
        'pacs-unavailable',
      ]);
      expect(held).toHaveLength(1);
      expect(Date.now() - startedAt).toBeLessThan(3000);
    } finally {
      stuck.closeAllConnections();
      await new Promise((resolve) => stuck.close(resolve));
    }
  });

  it('a PACS that is down: the images are listed as not read', async () => {
    // A port that was just free: nothing listens there (connection refused, as a PACS that is down).
    const closed: Server = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const downUrl = `http://127.0.0.1:${(closed.address() as AddressInfo).port}/dicom-web`;
    await new Promise((resolve) => closed.close(resolve));
    const { found } = await readFromStandIn(
      [
        imagingStudy('down-1', {
          study: '1.2.826.0.1.1',
          series: '1.2.826.0.1.1.1',
          instance: '1.2.826.0.1.1.1.1',
        }),
      ],
      sources({ baseUrl: downUrl }),
    );
    expect(found.images[0].problem?.kind).toBe('pacs-unavailable');
  });

  it('the review app shows a cited study’s picture from the PACS, after the clinician’s token read the study', async () => {
    const uids = { study: '1.2.826.0.1.1', series: '1.2.826.0.1.1.1', instance: '1.2.826.0.1.1.1.1' };
    await readFromStandIn(
      [
        imagingStudy('review-chest', uids),
        imagingStudy('review-other', {
          study: '1.2.826.0.1.3',
          series: '1.2.826.0.1.3.1',
          instance: '1.2.826.0.1.3.1.1',
        }),
      ],
      sources(),
    );
    const context: LaunchContext = {
      launchId: 'launch',
      fhirBaseUrl: standIn.url,
      patient: patientId,
      encounter: undefined,
      fhirUser: 'Practitioner/dr-a',
      accessToken: 'clinician-token',
      expiresAt: Date.now() + 3_600_000,
      scopes: [],
      csrfToken: 'csrf',
    };
    const app = express();
    app.use(
      '/api/drafts',
      draftsApiRouter({
        requireLaunchContext: () => (_request, response, next) => {
          response.locals.launchContext = context;
          next();
        },
        lifecycleFor: () => createMemoryDraftLifecycle([]).lifecycle,
        fhirClientFor: () => new FhirClient({ baseUrl: standIn.url }),
        logger: silentLogger(),
        pacs: sources().pacs,
      }),
    );
    const server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    try {
      const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/drafts/citations`;
      const picture = await fetch(`${base}/ImagingStudy/review-chest/image`);
      expect(picture.status).toBe(200);
      expect(await picture.json()).toMatchObject({ contentType: 'image/jpeg', width: 160, height: 120 });
      // The PACS holds this study under another patient's identifier: no picture.
      expect((await fetch(`${base}/ImagingStudy/review-other/image`)).status).toBe(403);
    } finally {
      server.closeAllConnections();
      await new Promise((resolve) => server.close(resolve));
    }
  });
});
