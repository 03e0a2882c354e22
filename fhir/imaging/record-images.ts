import type {
  Attachment,
  DiagnosticReport,
  DocumentReference,
  Endpoint,
  FhirResource,
  ImagingStudy,
  Media,
  Patient,
} from 'fhir/r4.js';
import { OperationOutcomeError } from '../operation-outcome.ts';
import type { PatientRecord } from '../patient-record.ts';
import type { PatientScopedReader } from '../patient-scope.ts';
import { type DicomWebClient, DicomWebError, isDicomUid, studyUidFromIdentifier } from './dicomweb-client.ts';
import { type ImageLimits, ImageRejectedError, type PreparedImage } from './image-preparation.ts';
import { prepareImageOffThread } from './image-preparation-thread.ts';

/**
 * A patient's images, found and fetched through the compartment guard: image attachments of their
 * DocumentReferences, Media and DiagnosticReport.presentedForm (inline or as a Binary on the FHIR
 * server), and the ImagingStudies' instances rendered by the PACS over DICOMweb. Every image is capped
 * and downscaled (image-preparation.ts) before it leaves this file; an image that cannot be read is
 * kept as a problem, so the draft can say what it did not look at.
 */
export type ImageProblemKind =
  | 'pacs-unavailable'
  | 'not-in-pacs'
  | 'no-pixel-data'
  | 'not-an-image'
  | 'too-large'
  | 'undecodable'
  | 'refused'
  | 'fetch-failed';

export interface RecordImage {
  /** `Media/<id>`, `DocumentReference/<id>`, `DiagnosticReport/<id>` or `ImagingStudy/<id>`: what a draft line cites. */
  citation: string;
  /** What the image is, from its resource (modality, body site, title). Patient data: never log it. */
  label: string;
  /** DICOM modality code (CR, DX, CT, ...) when known, else the Media's type code or 'image'. */
  modality: string;
  /** When it was taken, as the resource says. */
  date?: string;
  image?: PreparedImage;
  problem?: { kind: ImageProblemKind; detail: string };
}

export interface ImageSourceOptions {
  limits: ImageLimits;
  /** Images read per draft at most (newest first). */
  maxImages: number;
  /** Absent: ImagingStudies are listed as not read. */
  pacs?: { client: DicomWebClient; defaultBaseUrl?: string };
  /** The record's cut (ISO instant): images taken after it are not part of this record. */
  notAfter?: string;
}

export interface RecordImages {
  images: RecordImage[];
  /** Resources read for the images that the record did not hold yet (Media, ImagingStudy): added to it for citations. */
  resources: FhirResource[];
  /** Image types the server (or the compartment guard) refused to search: their images were not looked for. */
  refusedTypes: string[];
}

function isImageAttachment(attachment: Attachment | undefined): attachment is Attachment {
  return Boolean(attachment?.contentType?.toLowerCase().startsWith('image/'));
}

function codeText(concept: { text?: string; coding?: { display?: string; code?: string }[] } | undefined) {
  return concept?.text ?? concept?.coding?.[0]?.display ?? concept?.coding?.[0]?.code;
}

async function attachmentBytes(
  reader: PatientScopedReader,
  holder: DocumentReference | Media | DiagnosticReport,
  attachment: Attachment,
  limits: ImageLimits,
): Promise<Uint8Array> {
  // The declared size is only a hint, but a large one saves the fetch.
  if (attachment.size !== undefined && attachment.size > limits.maxInputBytes)
    throw new ImageRejectedError('too-large', 'the attachment declares a size over the cap');
  if (attachment.data !== undefined) return Buffer.from(attachment.data, 'base64');
  if (!attachment.url)
    throw new ImageRejectedError('not-an-image', 'the attachment has neither data nor url');
  const binary = await reader.attachment(holder, attachment.url);
  if (typeof binary.data !== 'string')
    throw new ImageRejectedError('not-an-image', 'the Binary holds no data');
  if (binary.data.length > (limits.maxInputBytes * 4) / 3 + 4)
    throw new ImageRejectedError('too-large', 'the Binary is over the size cap');
  return Buffer.from(binary.data, 'base64');
}

function problemOf(error: unknown): { kind: ImageProblemKind; detail: string } {
  if (error instanceof ImageRejectedError) return { kind: error.problem, detail: error.message };
  if (error instanceof DicomWebError) {
    const kinds: Record<DicomWebError['problem'], ImageProblemKind> = {
      unavailable: 'pacs-unavailable',
      'not-found': 'not-in-pacs',
      'no-image': 'no-pixel-data',
      refused: 'refused',
    };
    return { kind: kinds[error.problem], detail: error.message };
  }
  if (error instanceof OperationOutcomeError && error.status === 403)
    return { kind: 'refused', detail: 'refused by the compartment guard' };
  return { kind: 'fetch-failed', detail: 'the image could not be fetched from the FHIR server' };
}

interface Candidate {
  citation: string;
  label: string;
  modality: string;
  date?: string;
  fetch: () => Promise<Uint8Array>;
}

function attachmentCandidates(
  reader: PatientScopedReader,
  limits: ImageLimits,
  documents: DocumentReference[],
  media: Media[],
  reports: DiagnosticReport[],
): Candidate[] {
  const candidates: Candidate[] = [];
  for (const document of documents) {
    const attachment = document.content?.map((content) => content.attachment).find(isImageAttachment);
    if (!attachment) continue;
    candidates.push({
      citation: `DocumentReference/${document.id}`,
      label: attachment.title ?? document.description ?? codeText(document.type) ?? 'image',
      modality: 'image',
      date: document.date,
      fetch: () => attachmentBytes(reader, document, attachment, limits),
    });
  }
  for (const item of media) {
    if (!isImageAttachment(item.content)) continue;
    const attachment = item.content;
    const site = codeText(item.bodySite);
    const kind = codeText(item.modality) ?? codeText(item.type) ?? 'image';
    candidates.push({
      citation: `Media/${item.id}`,
      label: [kind, site].filter(Boolean).join(', '),
      modality: item.modality?.coding?.[0]?.code ?? item.type?.coding?.[0]?.code ?? 'image',
      date: item.createdDateTime ?? item.createdPeriod?.start ?? item.issued,
      fetch: () => attachmentBytes(reader, item, attachment, limits),
    });
  }
  for (const report of reports) {
    const attachment = report.presentedForm?.find(isImageAttachment);
    if (!attachment) continue;
    candidates.push({
      citation: `DiagnosticReport/${report.id}`,
      label: codeText(report.code) ?? 'report image',
      modality: 'image',
      date: report.effectiveDateTime ?? report.issued,
      fetch: () => attachmentBytes(reader, report, attachment, limits),
    });
  }
  return candidates;
}

/** The base to ask for a study: its Endpoint's address when it has one (and it is allowed), else the configured one. */
async function studyBase(
  readEndpoint: (id: string) => Promise<Endpoint>,
  study: ImagingStudy,
  pacs: PacsAccess,
): Promise<string> {
  const endpointId = /(?:^|\/)Endpoint\/([A-Za-z0-9\-.]{1,64})$/.exec(
    study.endpoint?.[0]?.reference ?? '',
  )?.[1];
  if (endpointId) {
    const endpoint = await readEndpoint(endpointId);
    const base = pacs.client.allowedBase(endpoint.address ?? '');
    if (!base) throw new DicomWebError('refused', 'the study names a PACS the service is not configured for');
    return base;
  }
  if (!pacs.defaultBaseUrl) throw new DicomWebError('refused', 'no PACS is configured');
  return pacs.defaultBaseUrl.replace(/\/+$/, '');
}

export type PacsAccess = NonNullable<ImageSourceOptions['pacs']>;

/** The series whose first instance is shown for a study. */
function shownSeries(study: ImagingStudy) {
  return study.series?.find((candidate) => isDicomUid(candidate.instance?.[0]?.uid));
}

/**
 * The first instance of a study rendered by the PACS, once the PACS confirms the study is this patient's (its
 * PatientID is one of the patient's identifiers): the compartment guard reaching into the PACS. Used for the
 * drafts (Endpoint read through the patient guard) and for the review app's pictures (read with the clinician's token).
 */
export async function renderedStudyImage(
  study: ImagingStudy,
  patient: Patient,
  pacs: PacsAccess,
  readEndpoint: (id: string) => Promise<Endpoint>,
): Promise<Uint8Array> {
  const series = shownSeries(study);
  const studyUid = studyUidFromIdentifier(
    study.identifier?.find((identifier) => identifier.system === 'urn:dicom:uid')?.value,
  );
  const instanceUid = series?.instance?.[0]?.uid;
  if (!studyUid || !series || !isDicomUid(series.uid) || !instanceUid)
    throw new DicomWebError('not-found', 'the ImagingStudy names no DICOM study, series and instance');
  const base = await studyBase(readEndpoint, study, pacs);
  const patientIdentifiers = new Set((patient.identifier ?? []).map((identifier) => identifier.value));
  const pacsPatientId = await pacs.client.studyPatientId(base, studyUid);
  if (!patientIdentifiers.has(pacsPatientId))
    throw new DicomWebError('refused', "the PACS holds the study under another patient's identifier");
  return pacs.client.renderedInstance(base, { study: studyUid, series: series.uid, instance: instanceUid });
}

function studyCandidates(
  reader: PatientScopedReader,
  patient: Patient,
  studies: ImagingStudy[],
  options: ImageSourceOptions,
  pacsState: { down: boolean },
): Candidate[] {
  const pacs = options.pacs;
  return studies.map((study) => {
    const series = shownSeries(study);
    const modality = series?.modality?.code ?? study.modality?.[0]?.code ?? 'image';
    const site = codeText(series?.bodySite && { coding: [series.bodySite] });
    return {
      citation: `ImagingStudy/${study.id}`,
      label: [study.description ?? series?.description ?? modality, site].filter(Boolean).join(', '),
      modality,
      date: study.started,
      fetch: async () => {
        if (!pacs) throw new DicomWebError('refused', 'no PACS is configured');
        // After one timeout or refusal the PACS is not asked again in this run: a slow PACS delays a draft once.
        if (pacsState.down)
          throw new DicomWebError('unavailable', 'the PACS did not answer earlier in this run');
        try {
          return await renderedStudyImage(study, patient, pacs, (id) =>
            reader.read<Endpoint>('Endpoint', id),
          );
        } catch (error) {
          if (error instanceof DicomWebError && error.problem === 'unavailable') pacsState.down = true;
          throw error;
        }
      },
    };
  });
}

async function searchOrEmpty<T extends FhirResource>(
  reader: PatientScopedReader,
  resourceType: T['resourceType'],
  refused: string[],
): Promise<T[]> {
  try {
    return await reader.search<T>(resourceType, { _count: 50 });
  } catch (error) {
    // A server without the type, refusing it to this client (scopes), or answering with another patient's
    // resource (the guard refuses the whole answer): no images of that kind, and the stage says so.
    if (error instanceof OperationOutcomeError && error.status !== undefined && error.status < 500) {
      refused.push(resourceType);
      return [];
    }
    throw error;
  }
}

/** Finds, fetches and prepares the patient's images, newest first, at most maxImages of them. */
export async function readRecordImages(
  reader: PatientScopedReader,
  record: PatientRecord,
  options: ImageSourceOptions,
): Promise<RecordImages> {
  const held = new Set(
    [record.encounter, ...record.noteResources, ...(record.additional ?? [])].map(
      (resource) => `${resource.resourceType}/${resource.id}`,
    ),
  );
  const ofType = <T extends FhirResource>(type: T['resourceType']) =>
    (record.additional ?? []).filter((resource): resource is T => resource.resourceType === type);
  // Types the record holds already are not searched again; Media is never part of the history.
  const refusedTypes: string[] = [];
  const media = await searchOrEmpty<Media>(reader, 'Media', refusedTypes);
  const studies = ofType<ImagingStudy>('ImagingStudy').length
    ? ofType<ImagingStudy>('ImagingStudy')
    : await searchOrEmpty<ImagingStudy>(reader, 'ImagingStudy', refusedTypes);
  const reports = ofType<DiagnosticReport>('DiagnosticReport').length
    ? ofType<DiagnosticReport>('DiagnosticReport')
    : await searchOrEmpty<DiagnosticReport>(reader, 'DiagnosticReport', refusedTypes);
  const pacsState = { down: false };
  // The record's notes and reports were admitted by the retrieval's reader: this reader checks them again
  // (same patient, same rule) before it fetches any of their attachments.
  const documents = record.noteResources.map((document) => reader.admit(document));
  const ownReports = reports.map((report) => reader.admit(report));
  const candidates = [
    ...attachmentCandidates(reader, options.limits, documents, media, ownReports),
    ...studyCandidates(reader, record.patient, studies, options, pacsState),
  ]
    .filter((candidate) => !options.notAfter || !candidate.date || candidate.date <= options.notAfter)
    .sort((first, second) => (second.date ?? '').localeCompare(first.date ?? ''))
    .slice(0, options.maxImages);
  const images: RecordImage[] = [];
  // One at a time: a slow PACS is found out once, and the FHIR server is not flooded with Binary reads.
  for (const candidate of candidates) {
    const { fetch, ...described } = candidate;
    try {
      const image = await prepareImageOffThread(await fetch(), options.limits);
      images.push({ ...described, image });
    } catch (error) {
      images.push({ ...described, problem: problemOf(error) });
    }
  }
  const cited = new Set(images.map((image) => image.citation));
  const resources = [...media, ...studies, ...reports].filter((resource) => {
    const reference = `${resource.resourceType}/${resource.id}`;
    return cited.has(reference) && !held.has(reference);
  });
  return { images, resources, refusedTypes };
}
