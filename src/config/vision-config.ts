import { z } from 'zod';

/**
 * Images in the record. One configuration routes each task to its model: text stays with `model`
 * (MedGemma 27B, or whatever `model.provider` runs), images are read by `model.vision` (MedGemma 4B
 * multimodal on the site's OpenAI-compatible server, e.g. vLLM serving google/medgemma-4b-it), and
 * `imaging.medsiglip` triages and compares them (MedSigLIP through @huggingface/inference on the
 * site's endpoint). Without `model.vision` no image is fetched or read.
 */
export const visionModelConfigSchema = z
  .object({
    /** e.g. http://vllm-4b:8000 (the client adds /v1/chat/completions). */
    endpointUrl: z.url(),
    model: z.string().min(1).default('google/medgemma-4b-it'),
    /** Read from the environment by the config loader, never logged. */
    accessToken: z.string().min(1).optional(),
    timeoutMs: z.coerce.number().int().min(1000).default(60_000),
    retries: z.coerce.number().int().min(0).max(5).default(1),
    /** A short preliminary description: two or three sentences. */
    maxOutputTokens: z.coerce.number().int().min(32).max(1024).default(200),
  })
  .strict();

export type VisionModelConfig = z.infer<typeof visionModelConfigSchema>;

const labelList = z.array(z.string().trim().min(1).max(200)).min(2).max(50);

export const imagingConfigSchema = z
  .object({
    /** Images read per draft at most, newest first. */
    maxImages: z.coerce.number().int().min(1).max(20).default(4),
    /** Largest image fetched, in bytes (attachment, Binary or PACS rendering). */
    maxInputBytes: z.coerce.number().int().min(65_536).default(20_971_520),
    /** Largest image decoded, in pixels (checked from its header before decoding). */
    maxInputPixels: z.coerce.number().int().min(65_536).default(60_000_000),
    /** Longest side of what is sent to a model; MedGemma's image encoder reads 896 x 896. */
    maxDimension: z.coerce.number().int().min(64).max(2048).default(896),
    /** Time for all of one draft's image reads (MedGemma 4B and MedSigLIP); images left are listed as not read. */
    readingBudgetMs: z.coerce.number().int().min(1000).default(120_000),
    pacs: z
      .object({
        /** DICOMweb base for ImagingStudies that name no Endpoint, e.g. https://pacs.example.org/dicom-web. */
        baseUrl: z.url({ protocol: /^https?$/ }).optional(),
        /** Further DICOMweb bases an ImagingStudy's Endpoint may name; anything else is refused. */
        allowedBaseUrls: z.array(z.url({ protocol: /^https?$/ })).default([]),
        accessToken: z.string().min(1).optional(),
        /** Per request: a PACS slower than this is treated as down for the rest of the draft. */
        timeoutMs: z.coerce.number().int().min(100).default(10_000),
      })
      .strict()
      .prefault({}),
    medsiglip: z
      .object({
        /** Zero-shot image classification endpoint (MedSigLIP behind a Hugging Face Inference Endpoint or TGI-style handler). */
        endpointUrl: z.url().optional(),
        /** Image embedding endpoint (feature extraction taking a base64 image); unset: no prior comparison. */
        embeddingEndpointUrl: z.url().optional(),
        accessToken: z.string().min(1).optional(),
        timeoutMs: z.coerce.number().int().min(1000).default(30_000),
        /** A label at or above this score becomes an image finding rules read as %imageFindings. */
        threshold: z.coerce.number().min(0).max(1).default(0.5),
        /** Candidate labels per modality code (CR, DX, CT, image, ...); `default` for the others. */
        labels: z.record(z.string().min(1), labelList).default({}),
        /** Cosine similarity at or above which an earlier image counts as the prior to compare with. */
        minimumSimilarity: z.coerce.number().min(-1).max(1).default(0.75),
      })
      .strict()
      .prefault({}),
  })
  .strict()
  .superRefine((config, context) => {
    if (config.medsiglip.endpointUrl && Object.keys(config.medsiglip.labels).length === 0) {
      context.addIssue({
        code: 'custom',
        path: ['medsiglip', 'labels'],
        message:
          'imaging.medsiglip.labels must list candidate labels (per modality) when its endpointUrl is set',
      });
    }
  });

export type ImagingConfig = z.infer<typeof imagingConfigSchema>;
