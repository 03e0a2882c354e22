import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Media } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { citationScopeOf, verifyCitations } from '../../agents/citation-verifier.ts';
import type { DraftEngine } from '../../agents/draft-engine.ts';
import {
  imageSectionHeading,
  readImages,
  usableDescription,
  withImageReading,
} from '../../agents/image-reading.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { prepareImage } from '../../fhir/imaging/image-preparation.ts';
import { readRecordImages } from '../../fhir/imaging/record-images.ts';
import { PatientScopedReader } from '../../fhir/patient-scope.ts';
import { silentLogger } from '../../src/log.ts';
import { OpenAiCompatibleVisionProvider } from '../../src/model/vision-provider.ts';
import { startScriptedInferenceServer } from '../support/openai-compatible-server.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { halvesJpeg } from './synthetic-images.ts';

/**
 * The image section as the verifier sees it, what counts as a usable description, and the patient guard
 * against a FHIR server that answers the Media search with another patient's image.
 */
describe('the image section in the draft', () => {
  it('is kept by the verifier when its citations are in the record, also for an engine that showed part of it', async () => {
    const record = buildPatientRecord({ patientId: 'p1', noteCount: 0 });
    const media: Media = {
      resourceType: 'Media',
      id: 'xray',
      status: 'completed',
      subject: { reference: 'Patient/p1' },
      content: { contentType: 'image/jpeg' },
    };
    record.additional = [media];
    const engine: DraftEngine = {
      id: 'narrow',
      version: '1',
      draft: async (request) => ({
        kind: request.kind,
        title: 'Summary',
        text: `## Summary\nSeen today [Encounter/${record.encounter.id}].`,
        headings: ['## Summary'],
        // This engine showed its model only the encounter: the images were shown to the vision model instead.
        shown: [`Encounter/${record.encounter.id}`],
        engine: { id: 'narrow', version: '1' },
      }),
    };
    const reading = {
      lines: [imageSectionHeading, '- [Media/xray] chest X-ray, 2024-01-01: No clear abnormality seen.'],
      findings: [],
      unusable: 1,
      prompt: { id: 'image-preliminary-read', version: '1.0.0' },
    };
    const result = await withImageReading(engine, reading).draft({
      kind: 'progress-summary',
      record,
      nudges: [],
    });
    const verification = verifyCitations(result.text, citationScopeOf(record, result.headings, result.shown));
    expect(verification.removed).toEqual([]);
    expect(verification.text).toContain(imageSectionHeading);
    expect(verification.cited).toContain('Media/xray');
    expect(result.flagged).toBe(true);
    expect(result.prompts).toEqual([{ id: 'image-preliminary-read', version: '1.0.0' }]);

    // Without the Media in the record, the image line is removed like any unsupported line.
    record.additional = [];
    const unsupported = verifyCitations(result.text, citationScopeOf(record, result.headings, result.shown));
    expect(unsupported.removed.map((entry) => entry.reason)).toEqual(['unknown-citation']);
  });

  it('takes plain prose only: markup, brackets, symbols, empty or cut-off answers are garbage', () => {
    expect(usableDescription('Frontal chest radiograph. No clear abnormality seen.', 'stop')).toBe(
      'Frontal chest radiograph. No clear abnormality seen.',
    );
    expect(usableDescription('Lungs clear.\n\nNo effusion seen today.', 'stop')).toBe(
      'Lungs clear. No effusion seen today.',
    );
    for (const garbage of [
      '',
      '{"finding": "normal"}',
      'Normal study [Patient/other] per report.',
      '<b>Normal</b> chest film today',
      '### Findings: none at all',
      '%%%% #### @@@@ 1234 5678 9999',
      'ok',
    ])
      expect(usableDescription(garbage, 'stop'), garbage).toBeUndefined();
    expect(usableDescription('Frontal chest radiograph showing a large', 'length')).toBeUndefined();
  });
});

describe('the patient guard on image searches', () => {
  let server: Server;
  let url: string;
  beforeAll(async () => {
    // A server that answers the Media search with another patient's image, as a misconfigured one might.
    server = createServer((request, response) => {
      const path = request.url ?? '';
      const bundle = (resources: unknown[]) => ({
        resourceType: 'Bundle',
        type: 'searchset',
        entry: resources.map((resource) => ({ resource })),
      });
      response.writeHead(200, { 'content-type': 'application/fhir+json' });
      if (path.startsWith('/fhir/Media'))
        return response.end(
          JSON.stringify(
            bundle([
              {
                resourceType: 'Media',
                id: 'theirs',
                status: 'completed',
                subject: { reference: 'Patient/p2' },
                content: { contentType: 'image/jpeg', data: halvesJpeg(32, 32).toString('base64') },
              },
            ]),
          ),
        );
      response.end(JSON.stringify(bundle([])));
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/fhir`;
  });
  afterAll(async () => {
    server.closeAllConnections();
    await new Promise((resolve) => server.close(resolve));
  });

  it('never reads another patient’s image, and reports the type it could not search', async () => {
    const reader = new PatientScopedReader(new FhirClient({ baseUrl: url, maxAttempts: 1 }), 'p1');
    const record = buildPatientRecord({ patientId: 'p1', noteCount: 0 });
    const found = await readRecordImages(reader, record, {
      limits: { maxInputBytes: 1e7, maxInputPixels: 1e8, maxDimension: 896 },
      maxImages: 4,
    });
    expect(found.images).toEqual([]);
    expect(found.resources).toEqual([]);
    expect(found.refusedTypes).toEqual(['Media']);
  });
});

describe('the time for reading images', () => {
  it('lists the images left when the budget runs out as not read, and does not wait for a slow model', async () => {
    const slow = await startScriptedInferenceServer([], {
      content: 'Frontal chest radiograph, no clear abnormality seen.',
      delayMs: 1500,
    });
    try {
      const limits = { maxInputBytes: 1e7, maxInputPixels: 1e8, maxDimension: 896 };
      const images = ['a', 'b', 'c'].map((id) => ({
        citation: `Media/${id}`,
        label: 'chest X-ray',
        modality: 'DX',
        date: '2024-01-01',
        image: prepareImage(halvesJpeg(64, 64), limits),
      }));
      const startedAt = Date.now();
      const reading = await readImages(images, 'Patient/p1', {
        vision: new OpenAiCompatibleVisionProvider({
          endpointUrl: slow.url,
          model: 'google/medgemma-4b-it',
          timeoutMs: 10_000,
          retries: 0,
        }),
        prompt: PromptLibrary.load().get('image-preliminary-read'),
        maxOutputTokens: 200,
        logger: silentLogger(),
        budgetMs: 500,
      });
      expect(Date.now() - startedAt).toBeLessThan(1400);
      expect(slow.requests).toHaveLength(1);
      expect(reading.lines.slice(1)).toEqual([
        '- [Media/a] chest X-ray, 2024-01-01: not read, the image model did not answer; open the image.',
        '- [Media/b] chest X-ray, 2024-01-01: not read, the time for reading images ran out; this draft was written without it.',
        '- [Media/c] chest X-ray, 2024-01-01: not read, the time for reading images ran out; this draft was written without it.',
      ]);
    } finally {
      await slow.close();
    }
  });
});
