import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import jpeg from 'jpeg-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { readImages } from '../../agents/image-reading.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { prepareImage } from '../../fhir/imaging/image-preparation.ts';
import type { RecordImage } from '../../fhir/imaging/record-images.ts';
import { silentLogger } from '../../src/log.ts';
import { MedSigLip } from '../../src/model/medsiglip.ts';
import { OpenAiCompatibleVisionProvider } from '../../src/model/vision-provider.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import { ruleFolder } from '../rules/helpers.ts';
import {
  type ScriptedInferenceServer,
  startScriptedInferenceServer,
} from '../support/openai-compatible-server.ts';
import { flatJpeg, halvesJpeg } from './synthetic-images.ts';

/**
 * MedSigLIP through @huggingface/inference against a scripted site endpoint that checks what it gets:
 * zero-shot classification (the image really sent, the configured labels exactly) and image embeddings.
 * Labels over the threshold become image findings that a rule reads as %imageFindings to raise the
 * visit's urgency; the most similar earlier image is named for comparison; answers that are garbage
 * (labels not asked, scores out of range, no vector) give no finding and no comparison.
 */
interface ReceivedClassification {
  labels: string[];
  width: number;
  height: number;
}

const limits = { maxInputBytes: 10_000_000, maxInputPixels: 50_000_000, maxDimension: 896 };
const chestLabels = ['pneumothorax', 'pleural effusion', 'normal chest radiograph'];

function meanBrightness(base64: string): {
  width: number;
  height: number;
  mean: number;
  leftMinusRight: number;
} {
  const decoded = jpeg.decode(Buffer.from(base64, 'base64'), { useTArray: true, formatAsRGBA: true });
  let sum = 0;
  let left = 0;
  let right = 0;
  for (let y = 0; y < decoded.height; y++)
    for (let x = 0; x < decoded.width; x++) {
      const value = decoded.data[(y * decoded.width + x) * 4];
      sum += value;
      if (x < decoded.width / 2) left += value;
      else right += value;
    }
  const pixels = decoded.width * decoded.height;
  return {
    width: decoded.width,
    height: decoded.height,
    mean: sum / pixels,
    leftMinusRight: (left - right) / pixels,
  };
}

describe('MedSigLIP triage, image findings for the rules, and the prior by embedding', () => {
  let endpoint: Server;
  let base: string;
  let vision: ScriptedInferenceServer;
  const classifications: ReceivedClassification[] = [];
  let mode: 'scores' | 'garbage' = 'scores';

  beforeAll(async () => {
    vision = await startScriptedInferenceServer([], {
      content: 'Frontal chest radiograph with a bright left half.',
    });
    endpoint = createServer((request, response) => {
      const chunks: Buffer[] = [];
      request.on('data', (chunk: Buffer) => chunks.push(chunk));
      request.on('end', () => {
        const body = JSON.parse(Buffer.concat(chunks).toString('utf8'));
        const answer = (status: number, value: unknown) =>
          response.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(value));
        if (request.url === '/classify') {
          // The Hugging Face zero-shot-image-classification payload, checked as a strict server would.
          const labels = body?.parameters?.candidate_labels;
          const image = body?.inputs?.image;
          if (!Array.isArray(labels) || typeof image !== 'string')
            return answer(422, { error: 'bad payload' });
          const seen = meanBrightness(image);
          classifications.push({ labels, width: seen.width, height: seen.height });
          if (mode === 'garbage') return answer(200, [{ label: 'made up', score: 7 }]);
          // Scores from what the image shows: a bright left half scores high for the first label.
          const first = seen.leftMinusRight > 100 ? 0.81 : 0.1;
          return answer(
            200,
            labels.map((label: string, index: number) => ({
              label,
              score: index === 0 ? first : (1 - first) / 2,
            })),
          );
        }
        if (request.url === '/embed') {
          if (typeof body?.inputs !== 'string') return answer(422, { error: 'bad payload' });
          if (mode === 'garbage') return answer(200, ['not', 'numbers']);
          const seen = meanBrightness(body.inputs);
          // A tiny "embedding": halves-like images point one way, flat ones another.
          return answer(200, [seen.leftMinusRight / 255, seen.mean / 255, 0.1, 0.1, 0.1, 0.1, 0.1, 0.1]);
        }
        answer(404, { error: 'no such route' });
      });
    });
    await new Promise<void>((resolve) => endpoint.listen(0, '127.0.0.1', resolve));
    base = `http://127.0.0.1:${(endpoint.address() as AddressInfo).port}`;
  });

  afterAll(async () => {
    await vision?.close();
    endpoint?.closeAllConnections();
    await new Promise((resolve) => endpoint?.close(resolve));
  });

  function image(citation: string, date: string, bytes: Buffer): RecordImage {
    return { citation, label: 'chest X-ray', modality: 'DX', date, image: prepareImage(bytes, limits) };
  }

  const images = () => [
    image('ImagingStudy/today', '2024-06-01', halvesJpeg(1600, 1200)),
    image('ImagingStudy/last-year', '2023-06-01', halvesJpeg(800, 600)),
    image('Media/flat-older', '2022-06-01', flatJpeg(800, 600, 128)),
  ];

  function reading() {
    return {
      vision: new OpenAiCompatibleVisionProvider({
        endpointUrl: vision.url,
        model: 'google/medgemma-4b-it',
        timeoutMs: 5000,
        retries: 0,
      }),
      prompt: PromptLibrary.load().get('image-preliminary-read'),
      maxOutputTokens: 200,
      medsiglip: {
        encoder: new MedSigLip({
          classificationEndpointUrl: `${base}/classify`,
          embeddingEndpointUrl: `${base}/embed`,
          timeoutMs: 5000,
        }),
        labels: { DX: chestLabels, default: ['photograph'] },
        threshold: 0.5,
        minimumSimilarity: 0.9,
      },
      logger: silentLogger(),
    };
  }

  it('sends the downscaled image and exactly the modality’s labels; labels over the threshold become findings', async () => {
    mode = 'scores';
    classifications.length = 0;
    const result = await readImages(images(), 'Patient/p1', reading());
    expect(classifications).toHaveLength(3);
    expect(classifications[0]).toEqual({ labels: chestLabels, width: 896, height: 672 });
    // Only the two half-bright images score pneumothorax over 0.5.
    expect(result.findings.map((finding) => [finding.code.text, finding.derivedFrom?.[0].reference])).toEqual(
      [
        ['pneumothorax', 'ImagingStudy/today'],
        ['pneumothorax', 'ImagingStudy/last-year'],
      ],
    );
    expect(result.findings[0]).toMatchObject({
      resourceType: 'Observation',
      status: 'preliminary',
      subject: { reference: 'Patient/p1' },
      valueQuantity: { value: 0.81 },
    });
    const todayLine = result.lines.find((line) => line.startsWith('- [ImagingStudy/today]'));
    expect(todayLine).toContain('Triage labels over 0.5: pneumothorax (0.81).');
    // The most similar earlier image is last year's study, not the older flat photo.
    expect(todayLine).toContain('Compared with [ImagingStudy/last-year]');
    expect(result.lines.find((line) => line.startsWith('- [Media/flat-older]'))).not.toContain('Triage');
  });

  it('a rule reads %imageFindings and raises the visit’s urgency', async () => {
    mode = 'scores';
    const loaded = await loadRuleSet(
      ruleFolder({
        'pneumothorax.yaml': `id: image-pneumothorax
version: 1.0.0
title: Possible pneumothorax on a recent image
trigger: [encounter-planned]
severity: warning
guideline:
  label: Site imaging escalation policy
  url: https://example.org/imaging-escalation
  recommendation: Review images flagged by triage before the visit.
condition:
  criteria:
    - id: triage-finding
      description: MedSigLIP scored pneumothorax over the site's threshold
      fhirpath: "%imageFindings.where(code.text = 'pneumothorax' and value.ofType(Quantity).value >= 0.5).exists()"
suggestedAction: Open the flagged image and review it before the visit.
urgency:
  level: urgent
  reason: Image triage suggests pneumothorax
`,
      }),
    );
    if (!loaded.ok) throw new Error(JSON.stringify(loaded.errors));
    const record = recordFromResources([
      { resourceType: 'Patient', id: 'p1', birthDate: '1970-01-01' },
      {
        resourceType: 'Encounter',
        id: 'e1',
        status: 'planned',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: 'Patient/p1' },
      },
    ]);
    const now = new Date('2024-06-02T00:00:00Z');
    const without = await evaluateRules(loaded.ruleSet, record, { trigger: 'encounter-planned', now });
    expect(without.urgency).toBeUndefined();

    record.imageFindings = (await readImages(images(), 'Patient/p1', reading())).findings;
    const withFindings = await evaluateRules(loaded.ruleSet, record, { trigger: 'encounter-planned', now });
    expect(withFindings.results.map((result) => [result.ruleId, result.status])).toEqual([
      ['image-pneumothorax', 'fired'],
    ]);
    expect(withFindings.urgency?.level).toBe('urgent');
  });

  it('garbage from MedSigLIP gives no finding and no comparison, and the preliminary read still stands', async () => {
    mode = 'garbage';
    const result = await readImages(images(), 'Patient/p1', reading());
    expect(result.findings).toEqual([]);
    const todayLine = result.lines.find((line) => line.startsWith('- [ImagingStudy/today]')) as string;
    expect(todayLine).toContain('Frontal chest radiograph with a bright left half.');
    expect(todayLine).not.toContain('Triage');
    expect(todayLine).not.toContain('Compared with');
    expect(todayLine).not.toContain('made up');
  });
});
