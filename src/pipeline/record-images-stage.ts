import type { DraftEngine } from '../../agents/draft-engine.ts';
import { type ImageReadingOptions, readImages, withImageReading } from '../../agents/image-reading.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { DicomWebClient } from '../../fhir/imaging/dicomweb-client.ts';
import {
  type ImageSourceOptions,
  type PacsAccess,
  readRecordImages,
} from '../../fhir/imaging/record-images.ts';
import { openPatientScope } from '../../fhir/patient-history.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { type AuthConfig, backendAuthConfigSchema } from '../config/auth-config.ts';
import type { ImagingConfig, VisionModelConfig } from '../config/vision-config.ts';
import type { Logger } from '../log.ts';
import { MedSigLip } from '../model/medsiglip.ts';
import { OpenAiCompatibleVisionProvider } from '../model/vision-provider.ts';

/**
 * The image stage of a job: the patient's images fetched through a compartment guard of their own
 * (fhir/imaging), read by the vision model and MedSigLIP (agents/image-reading.ts), the resources they
 * came from added to the record so their lines can be cited and verified, and the findings put where the
 * rules read them. Images dated after the record's cut (a visit in the past) are left out like the rest.
 */
export interface RecordImagesStageOptions {
  fhir: FhirClient;
  imaging: ImagingConfig;
  reading: ImageReadingOptions;
}

export function imageSourceOptions(imaging: ImagingConfig): ImageSourceOptions {
  const bases = [imaging.pacs.baseUrl, ...imaging.pacs.allowedBaseUrls].filter(
    (base): base is string => base !== undefined,
  );
  return {
    limits: {
      maxInputBytes: imaging.maxInputBytes,
      maxInputPixels: imaging.maxInputPixels,
      maxDimension: imaging.maxDimension,
    },
    maxImages: imaging.maxImages,
    ...(bases.length > 0
      ? {
          pacs: {
            client: new DicomWebClient({
              allowedBaseUrls: bases,
              timeoutMs: imaging.pacs.timeoutMs,
              maxResponseBytes: imaging.maxInputBytes,
              ...(imaging.pacs.accessToken ? { accessToken: imaging.pacs.accessToken } : {}),
            }),
            ...(imaging.pacs.baseUrl ? { defaultBaseUrl: imaging.pacs.baseUrl } : {}),
          },
        }
      : {}),
  };
}

export function recordImagesStage(
  options: RecordImagesStageOptions,
): (record: PatientRecord) => Promise<(engine: DraftEngine) => DraftEngine> {
  const sources = imageSourceOptions(options.imaging);
  return async (record) => {
    const reader = openPatientScope(options.fhir, record.encounter);
    const found = await readRecordImages(reader, record, { ...sources, notAfter: record.asOf });
    if (found.refusedTypes.length > 0)
      // Types only: a site without the scopes (system/Media.rs, ImagingStudy.rs, DiagnosticReport.rs) sees this once per job.
      options.reading.logger.warn({ resourceTypes: found.refusedTypes }, 'image-types-not-searched');
    record.additional = [...(record.additional ?? []), ...found.resources];
    const reading = await readImages(found.images, `Patient/${record.patient.id}`, options.reading);
    record.imageFindings = reading.findings;
    return (engine) => withImageReading(engine, reading);
  };
}

/** The stage as the service configures it: absent without `model.vision` (no image is fetched or read then). */
export function createRecordImagesStage(
  config: { model: { vision?: VisionModelConfig }; imaging: ImagingConfig },
  fhir: FhirClient,
  logger: Logger,
): ReturnType<typeof recordImagesStage> | undefined {
  const vision = config.model.vision;
  if (!vision) return undefined;
  const medsiglip = config.imaging.medsiglip;
  const encoder =
    medsiglip.endpointUrl || medsiglip.embeddingEndpointUrl
      ? new MedSigLip({
          ...(medsiglip.endpointUrl ? { classificationEndpointUrl: medsiglip.endpointUrl } : {}),
          ...(medsiglip.embeddingEndpointUrl ? { embeddingEndpointUrl: medsiglip.embeddingEndpointUrl } : {}),
          ...(medsiglip.accessToken ? { accessToken: medsiglip.accessToken } : {}),
          timeoutMs: medsiglip.timeoutMs,
        })
      : undefined;
  return recordImagesStage({
    fhir,
    imaging: config.imaging,
    reading: {
      vision: new OpenAiCompatibleVisionProvider({
        endpointUrl: vision.endpointUrl,
        model: vision.model,
        ...(vision.accessToken ? { accessToken: vision.accessToken } : {}),
        timeoutMs: vision.timeoutMs,
        retries: vision.retries,
      }),
      prompt: PromptLibrary.load().get('image-preliminary-read'),
      maxOutputTokens: vision.maxOutputTokens,
      budgetMs: config.imaging.readingBudgetMs,
      ...(encoder
        ? {
            medsiglip: {
              encoder,
              labels: medsiglip.labels,
              threshold: medsiglip.threshold,
              minimumSimilarity: medsiglip.minimumSimilarity,
            },
          }
        : {}),
      logger,
    },
  });
}

/** What reading images needs from the FHIR server beyond the history: one scope per type (see auth-config.ts). */
export const imagingBackendScopes = [
  'system/Media.rs',
  'system/ImagingStudy.rs',
  'system/DiagnosticReport.rs',
  // Read by id only: where an ImagingStudy's PACS is.
  'system/Endpoint.r',
];
/** What the review app needs to open image citations and their pictures with the clinician's token. */
export const imagingLaunchScopes = [
  'patient/Media.r',
  'patient/ImagingStudy.r',
  'patient/DiagnosticReport.r',
  // Where a cited study's PACS is: an address, no patient's data, hence user/.
  'user/Endpoint.r',
];

const scopeType = (scope: string) => /^[a-z]+\/([A-Za-z*]+)\./.exec(scope)?.[1];

function withScopes(scopes: string[], added: string[]): string[] {
  const named = new Set(scopes.map(scopeType));
  // A type already named keeps the site's scope (servers honour only the first scope per type).
  return [...scopes, ...added.filter((scope) => !named.has(scopeType(scope)) && !named.has('*'))];
}

/**
 * With `model.vision` set, the service asks for the scopes reading images needs, as the patient intake does for
 * its own: the backend's (Media, ImagingStudy, DiagnosticReport, Endpoint) and, when the launch is configured, the
 * review app's. The sandbox registers a mode-none service under its own client id: that one gets them too.
 */
export function withImagingScopes(
  auth: AuthConfig,
  config: { model: { vision?: VisionModelConfig } },
  sandboxClientId?: string,
): AuthConfig {
  if (!config.model.vision) return auth;
  let backend = auth.backend;
  if (backend.mode === 'none' && sandboxClientId)
    backend = backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: sandboxClientId });
  return {
    ...auth,
    backend:
      backend.mode === 'smart-backend'
        ? { ...backend, scopes: withScopes(backend.scopes, imagingBackendScopes) }
        : backend,
    ...(auth.launch
      ? { launch: { ...auth.launch, scopes: withScopes(auth.launch.scopes, imagingLaunchScopes) } }
      : {}),
  };
}

/** For the review app: the PACS its pictures of cited ImagingStudies come from, when the service reads images. */
export function reviewImagingOptions(config: {
  model: { vision?: VisionModelConfig };
  imaging: ImagingConfig;
}): { pacs?: PacsAccess } {
  const pacs = config.model.vision ? imageSourceOptions(config.imaging).pacs : undefined;
  return pacs ? { pacs } : {};
}
