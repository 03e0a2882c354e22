import type { Observation } from 'fhir/r4.js';
import type { RecordImage } from '../fhir/imaging/record-images.ts';
import type { Logger } from '../src/log.ts';
import { cosineSimilarity, type MedSigLip } from '../src/model/medsiglip.ts';
import { ModelError } from '../src/model/provider.ts';
import type { VisionProvider } from '../src/model/vision-provider.ts';
import type { DraftEngine, DraftRequest, DraftResult } from './draft-engine.ts';
import { type PromptTemplate, renderPrompt } from './prompt-library.ts';

/**
 * The record's images, read for the draft: MedGemma 4B writes a short preliminary description of each
 * (text stays with the drafting model), MedSigLIP scores the site's labels for its modality (labels over
 * the threshold become image findings the rules read as %imageFindings) and finds the most similar
 * earlier image to compare with. Each image becomes one line under a heading that says it is an AI
 * preliminary read and not a radiology report, citing the image's resource, so the citation verifier
 * checks it like any other line. An image that could not be fetched, or whose read was unusable, gets a
 * line that says so instead; an unusable answer is never shown and the draft is flagged.
 */
export const imageSectionHeading = '## Images: AI preliminary read, not a radiology report';

export interface ImageReadingOptions {
  vision: VisionProvider;
  prompt: PromptTemplate;
  maxOutputTokens: number;
  medsiglip?: {
    encoder: MedSigLip;
    /** Candidate labels per modality code; `default` for the others. */
    labels: Readonly<Record<string, readonly string[]>>;
    threshold: number;
    minimumSimilarity: number;
  };
  logger: Logger;
  /**
   * Time for all of a draft's image reads (model and MedSigLIP calls): images left when it runs out are listed as
   * not read, so slow inference cannot hold a job past its queue lease.
   */
  budgetMs?: number;
}

export interface ImageReading {
  /** The section's lines (heading first), empty when the record has no image. */
  lines: string[];
  /** Labels over the threshold, as preliminary Observations derived from the image (never written, never citable). */
  findings: Observation[];
  /** Images whose read was dropped as unusable: the draft is flagged. */
  unusable: number;
  /** The vision prompt, when the vision model was asked at least once (for the AI Provenance). */
  prompt?: { id: string; version: string };
}

const problemWords: Record<NonNullable<RecordImage['problem']>['kind'], string> = {
  'pacs-unavailable': 'the PACS did not answer in time',
  'not-in-pacs': 'the PACS does not hold it',
  'no-pixel-data': 'the PACS has no picture for it (no pixel data)',
  'not-an-image': 'the file is not an image',
  'too-large': 'the image is over the size limit',
  undecodable: 'the image could not be decoded',
  refused: 'it could not be confirmed as this patient’s image',
  'fetch-failed': 'it could not be fetched',
};

/**
 * A usable description: a few sentences of plain prose. Anything else (empty, JSON, markup, brackets
 * that could pose as citations, control characters, a run of symbols, cut off at the token limit) is
 * garbage and is dropped, never repaired.
 */
export function usableDescription(text: string, finishReason: string): string | undefined {
  if (finishReason !== 'stop') return undefined;
  const flat = text.replace(/\s+/g, ' ').trim();
  if (flat.length < 12 || flat.length > 800) return undefined;
  if (/[[\]{}<>`|#*]/.test(flat) || /\p{Cc}/u.test(flat)) return undefined;
  const words = flat.match(/\p{L}{2,}/gu) ?? [];
  if (words.length < 3) return undefined;
  const letters = (flat.match(/\p{L}/gu) ?? []).length;
  if (letters / flat.length < 0.6) return undefined;
  return flat;
}

function labelsFor(modality: string, labels: Readonly<Record<string, readonly string[]>>) {
  return labels[modality] ?? labels.default;
}

function describedAs(image: RecordImage): string {
  const date = image.date ? `, ${image.date.slice(0, 10)}` : '';
  // The label comes from the record: no brackets, so it cannot pose as a citation.
  return `${image.label.replace(/[[\]\n]/g, ' ').slice(0, 120)}${date}`;
}

export async function readImages(
  images: RecordImage[],
  patientReference: string,
  options: ImageReadingOptions,
  signal?: AbortSignal,
): Promise<ImageReading> {
  const reading: ImageReading = { lines: [], findings: [], unusable: 0 };
  if (images.length === 0) return reading;
  const budget = options.budgetMs !== undefined ? AbortSignal.timeout(options.budgetMs) : undefined;
  const stop = signal && budget ? AbortSignal.any([signal, budget]) : (signal ?? budget);
  reading.lines.push(imageSectionHeading);
  const embeddings = new Map<RecordImage, number[]>();
  const medsiglip = options.medsiglip;
  const counts = { read: 0, unusable: 0, notFetched: 0, modelFailed: 0, outOfTime: 0, findings: 0 };

  for (const image of images) {
    if (!image.image) continue;
    if (medsiglip?.encoder.embeds) {
      try {
        if (stop?.aborted) break;
        embeddings.set(image, await medsiglip.encoder.embed(image.image.jpeg, stop));
      } catch (error) {
        if (!(error instanceof ModelError)) throw error;
      }
    }
  }

  for (const image of images) {
    const citation = `[${image.citation}]`;
    if (!image.image) {
      counts.notFetched++;
      const why = problemWords[image.problem?.kind ?? 'fetch-failed'];
      reading.lines.push(
        `- ${citation} ${describedAs(image)}: not read, ${why}; this draft was written without it.`,
      );
      continue;
    }
    if (budget?.aborted) {
      counts.outOfTime++;
      reading.lines.push(
        `- ${citation} ${describedAs(image)}: not read, the time for reading images ran out; this draft was written without it.`,
      );
      continue;
    }
    const parts: string[] = [];
    let usable: string | undefined;
    let modelFailed = false;
    reading.prompt = { id: options.prompt.id, version: options.prompt.version };
    try {
      const answer = await options.vision.describe({
        instruction: renderPrompt(options.prompt, { label: describedAs(image), modality: image.modality }),
        jpeg: image.image.jpeg,
        maxTokens: options.maxOutputTokens,
        signal: stop,
      });
      usable = usableDescription(answer.text, answer.finishReason);
    } catch (error) {
      if (!(error instanceof ModelError)) throw error;
      // A bad-response is garbage from the endpoint; a timeout or 5xx is the model being away.
      modelFailed = error.code !== 'bad-response';
    }
    if (usable) {
      counts.read++;
      parts.push(`${usable}`);
    } else if (modelFailed) {
      counts.modelFailed++;
      parts.push('not read, the image model did not answer; open the image.');
    } else {
      counts.unusable++;
      reading.unusable++;
      parts.push('the AI read was unusable and was left out; open the image.');
    }

    if (medsiglip?.encoder.classifies) {
      const labels = labelsFor(image.modality, medsiglip.labels);
      if (labels) {
        try {
          const scores = await medsiglip.encoder.classify(image.image.jpeg, labels, stop);
          const above = scores.filter((entry) => entry.score >= medsiglip.threshold);
          for (const entry of above) {
            counts.findings++;
            reading.findings.push({
              resourceType: 'Observation',
              id: `image-finding-${reading.findings.length + 1}`,
              status: 'preliminary',
              code: { text: entry.label },
              subject: { reference: patientReference },
              ...(image.date ? { effectiveDateTime: image.date } : {}),
              valueQuantity: { value: Number(entry.score.toFixed(3)) },
              method: { text: 'MedSigLIP zero-shot classification' },
              derivedFrom: [{ reference: image.citation }],
            });
          }
          if (above.length > 0)
            parts.push(
              `Triage labels over ${medsiglip.threshold}: ${above.map((entry) => `${entry.label.replace(/[[\]]/g, ' ')} (${entry.score.toFixed(2)})`).join(', ')}.`,
            );
        } catch (error) {
          if (!(error instanceof ModelError)) throw error;
        }
      }
    }

    const prior = mostSimilarEarlier(image, embeddings, medsiglip?.minimumSimilarity ?? 1);
    if (prior)
      parts.push(
        `Compared with [${prior.citation}] (${describedAs(prior)}), the most similar earlier image.`,
      );
    reading.lines.push(`- ${citation} ${describedAs(image)}: ${parts.join(' ')}`);
  }
  // Counts only: descriptions and labels are patient data.
  options.logger.info({ images: images.length, ...counts }, 'images-read');
  return reading;
}

function mostSimilarEarlier(
  image: RecordImage,
  embeddings: Map<RecordImage, number[]>,
  minimumSimilarity: number,
): RecordImage | undefined {
  const own = embeddings.get(image);
  if (!own || !image.date) return undefined;
  let best: { image: RecordImage; similarity: number } | undefined;
  for (const [other, vector] of embeddings) {
    if (other === image || !other.date || other.date >= image.date) continue;
    const similarity = cosineSimilarity(own, vector);
    if (similarity === undefined || similarity < minimumSimilarity) continue;
    if (!best || similarity > best.similarity) best = { image: other, similarity };
  }
  return best?.image;
}

/**
 * The engine with the image section appended to whatever it writes (and to its fallback's), its heading
 * exempt from citations like the template's own headings, and the draft flagged when a read was dropped.
 */
export function withImageReading(engine: DraftEngine, reading: ImageReading): DraftEngine {
  if (reading.lines.length === 0) return engine;
  const append = (result: DraftResult): DraftResult => ({
    ...result,
    text: `${result.text.trimEnd()}\n\n${reading.lines.join('\n')}\n`,
    headings: [...result.headings, imageSectionHeading],
    // A model that saw part of the record may cite only that; the images were shown to the 4B model.
    ...(result.shown
      ? {
          shown: [
            ...result.shown,
            ...reading.lines.flatMap((line) =>
              [...line.matchAll(/\[([A-Za-z]+\/[^\]]+)\]/g)].map((match) => match[1]),
            ),
          ],
        }
      : {}),
    ...(reading.prompt ? { prompts: [...(result.prompts ?? []), reading.prompt] } : {}),
    ...(reading.unusable > 0 ? { flagged: true } : {}),
  });
  return {
    id: engine.id,
    version: engine.version,
    draft: async (request: DraftRequest) => append(await engine.draft(request)),
    ...(engine.fallback ? { fallback: withImageReading(engine.fallback, reading) } : {}),
  };
}
