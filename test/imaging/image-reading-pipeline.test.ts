import type { Binary, DocumentReference, Encounter, Media, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { imageSectionHeading } from '../../agents/image-reading.ts';
import { DraftNoteWriter, flaggedDescriptionMarker } from '../../fhir/draft-note.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import { imagingConfigSchema } from '../../src/config/vision-config.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { createRecordImagesStage } from '../../src/pipeline/record-images-stage.ts';
import type { EncounterJob } from '../../src/queue/job-queue.ts';
import type { RunningService } from '../../src/service.ts';
import { startSandboxService } from '../integration/service-harness.ts';
import {
  type ChatCompletionRequestBody,
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { halvesJpeg, halvesPng, type ImageSent, imageInRequest } from './synthetic-images.ts';

/**
 * The core path of issue 18 against the sandbox EHR's real FHIR API: a patient's Media and an image
 * attached to a DocumentReference (as a Binary) are fetched through the compartment guard, downscaled,
 * sent to a scripted OpenAI-compatible vision server (as vLLM serves MedGemma 4B) that checks the image
 * it received, and each description becomes a cited line under the preliminary-read heading that the
 * citation verifier keeps. A huge image arrives downscaled, a text file behind image/png is not sent,
 * an endpoint answering garbage has its line dropped and the draft flagged.
 */
const draftSystemBase = 'urn:test:image-reading';
const huge = { width: 4000, height: 3000 };

describe('images in the draft: attachment and Media through MedGemma 4B to a verified line', () => {
  let service: RunningService;
  let fhir: FhirClient;
  let vision: ScriptedInferenceServer;
  const received: ImageSent[] = [];
  let patient: Patient;
  let encounter: Encounter;
  let chestMedia: Media;
  let fakeMedia: Media;
  let photoNote: DocumentReference;
  let otherPatientMedia: Media;

  const reply = (body: ChatCompletionRequestBody) => {
    const image = imageInRequest(body);
    received.push(image);
    // The scripted model answers from what it really received: white on the left, black on the right.
    if (image.leftMean > 200 && image.rightMean < 50)
      return {
        content:
          'Frontal chest radiograph. The left half is bright and the right half is dark. No clear abnormality seen.',
      };
    return { content: 'Unexpected image content.' };
  };

  beforeAll(async () => {
    ({ service, fhir } = await startSandboxService({ EHR_AGENT_SANDBOX__PATIENTS: '1' }));
    vision = await startScriptedInferenceServer([], reply);
    patient = (
      await fhir.create<Patient>({
        resourceType: 'Patient',
        identifier: [{ system: 'urn:test:mrn', value: 'MRN-IMG-1' }],
        birthDate: '1960-01-01',
      })
    ).resource;
    const other = (await fhir.create<Patient>({ resourceType: 'Patient', birthDate: '1970-01-01' })).resource;
    encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'finished',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patient.id}` },
        period: { start: '2024-03-01T09:00:00Z', end: '2024-03-01T10:00:00Z' },
      })
    ).resource;
    chestMedia = (
      await fhir.create<Media>({
        resourceType: 'Media',
        status: 'completed',
        subject: { reference: `Patient/${patient.id}` },
        modality: {
          coding: [{ system: 'http://dicom.nema.org/resources/ontology/DCM', code: 'DX' }],
          text: 'chest X-ray',
        },
        createdDateTime: '2024-03-01T09:30:00Z',
        content: { contentType: 'image/png', data: halvesPng(huge.width, huge.height).toString('base64') },
      })
    ).resource;
    fakeMedia = (
      await fhir.create<Media>({
        resourceType: 'Media',
        status: 'completed',
        subject: { reference: `Patient/${patient.id}` },
        createdDateTime: '2024-02-01T09:30:00Z',
        content: {
          contentType: 'image/png',
          data: Buffer.from('this is a text file pretending to be a PNG').toString('base64'),
        },
      })
    ).resource;
    const binary = (
      await fhir.create<Binary>({
        resourceType: 'Binary',
        contentType: 'image/jpeg',
        data: halvesJpeg(640, 480).toString('base64'),
      })
    ).resource;
    photoNote = (
      await fhir.create<DocumentReference>({
        resourceType: 'DocumentReference',
        status: 'current',
        subject: { reference: `Patient/${patient.id}` },
        date: '2024-01-15T10:00:00Z',
        description: 'wound photograph',
        content: [{ attachment: { contentType: 'image/jpeg', url: `Binary/${binary.id}` } }],
      })
    ).resource;
    otherPatientMedia = (
      await fhir.create<Media>({
        resourceType: 'Media',
        status: 'completed',
        subject: { reference: `Patient/${other.id}` },
        createdDateTime: '2024-03-01T09:30:00Z',
        content: { contentType: 'image/jpeg', data: halvesJpeg(64, 64).toString('base64') },
      })
    ).resource;
  }, 120_000);

  afterAll(async () => {
    await vision?.close();
    await service?.close();
  });

  let runs = 0;
  async function runJob(visionUrl: string): Promise<{ text: string; draft: DocumentReference }> {
    // A draft system of its own per run: each run writes a new draft instead of finding the last one.
    const draftSystem = `${draftSystemBase}:${++runs}`;
    const job: EncounterJob = {
      id: `job-${encounter.id}-${received.length}`,
      encounterId: encounter.id as string,
      source: 'regenerate',
      status: 'running',
      attempts: 1,
      createdAt: new Date().toISOString(),
      runAt: new Date().toISOString(),
    };
    const readImages = createRecordImagesStage(
      {
        model: {
          vision: {
            endpointUrl: visionUrl,
            model: 'google/medgemma-4b-it',
            timeoutMs: 5000,
            retries: 0,
            maxOutputTokens: 200,
          },
        },
        imaging: imagingConfigSchema.parse({}),
      },
      fhir,
      silentLogger(),
    );
    const outcome = await processEncounterJob(job, {
      fhir,
      engine: createExtractiveEngine(),
      writer: new DraftNoteWriter(fhir, draftSystem),
      triggers: { finished: 'progress-summary' },
      draftIdentifierSystem: draftSystem,
      logger: silentLogger(),
      ...(readImages ? { readImages } : {}),
    });
    expect(outcome).toBe('draft-created');
    const drafts = await fhir.search<DocumentReference>('DocumentReference', {
      encounter: `Encounter/${encounter.id}`,
      _sort: '-_lastUpdated',
    });
    const draft = drafts.find((document) =>
      document.identifier?.some((identifier) => identifier.system === draftSystem),
    ) as DocumentReference;
    return {
      draft,
      text: decodeBase64Text(draft.content[0].attachment.data as string, 'text/plain; charset=utf-8'),
    };
  }

  it('sends each real image downscaled, and writes one cited preliminary-read line per image', async () => {
    const { text, draft } = await runJob(vision.url);

    // Two real images went to the model (the text file behind image/png and the other patient's did not).
    expect(received).toHaveLength(2);
    const [chest, photo] = received;
    // The 4000 x 3000 PNG arrived as an 896 x 672 JPEG with its content kept; the photo as it was (640 x 480).
    expect([chest.width, chest.height]).toEqual([896, 672]);
    expect(chest.leftMean).toBeGreaterThan(200);
    expect(chest.rightMean).toBeLessThan(50);
    expect([photo.width, photo.height]).toEqual([640, 480]);
    expect(chest.prompt).toContain('chest X-ray');
    expect(vision.requests[0].body.model).toBe('google/medgemma-4b-it');
    expect(vision.requests[0].path).toBe('/v1/chat/completions');

    const lines = text.split('\n');
    const heading = lines.indexOf(imageSectionHeading);
    expect(heading).toBeGreaterThan(-1);
    const section = lines.slice(heading + 1).filter((line) => line.startsWith('- '));
    const chestLine = section.find((line) => line.includes(`[Media/${chestMedia.id}]`));
    expect(chestLine).toContain('No clear abnormality seen.');
    expect(section.find((line) => line.includes(`[DocumentReference/${photoNote.id}]`))).toContain(
      'Frontal chest radiograph',
    );
    expect(section.find((line) => line.includes(`[Media/${fakeMedia.id}]`))).toContain(
      'not read, the file is not an image',
    );
    expect(text).not.toContain(otherPatientMedia.id as string);
    // Every image line cites a resource of this record, so the verifier kept it and the draft is not flagged.
    expect(citationsIn(text)).toEqual(
      expect.arrayContaining([`Media/${chestMedia.id}`, `Media/${fakeMedia.id}`]),
    );
    expect(draft.description).not.toContain(flaggedDescriptionMarker);
  });

  it('drops the line of an endpoint answering garbage, never shows the garbage, and flags the draft', async () => {
    const garbage = await startScriptedInferenceServer([], () => ({
      content: '{"description": [[[[ ]]]] }}}',
    }));
    try {
      const { text, draft } = await runJob(garbage.url);
      expect(garbage.requests).toHaveLength(2);
      expect(text).not.toContain('[[[[');
      const chestLine = text.split('\n').find((line) => line.includes(`[Media/${chestMedia.id}]`));
      expect(chestLine).toContain('the AI read was unusable and was left out');
      expect(draft.description).toContain(flaggedDescriptionMarker);
    } finally {
      await garbage.close();
    }
  });

  it('goes on without the read when the vision model is down, and says so', async () => {
    const down = await startScriptedInferenceServer([], { status: 503, error: 'overloaded' });
    try {
      const { text } = await runJob(down.url);
      const chestLine = text.split('\n').find((line) => line.includes(`[Media/${chestMedia.id}]`));
      expect(chestLine).toContain('not read, the image model did not answer');
    } finally {
      await down.close();
    }
  });
});
