import type {
  Attachment,
  Binary,
  Endpoint,
  FhirResource,
  ImagingStudy,
  Patient,
  QuestionnaireResponseItemAnswer,
} from 'fhir/r4.js';
import { personName } from '../../fhir/display-labels.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { DicomWebError } from '../../fhir/imaging/dicomweb-client.ts';
import { ImageRejectedError } from '../../fhir/imaging/image-preparation.ts';
import { prepareImageOffThread } from '../../fhir/imaging/image-preparation-thread.ts';
import { type PacsAccess, renderedStudyImage } from '../../fhir/imaging/record-images.ts';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import { barePatientId, belongsToPatient } from '../../fhir/patient-scope.ts';

/**
 * What the review page shows when a clinician opens a `[Type/id]` citation: a few labelled fields a human can
 * check at a glance, plus the resource itself. Also decides whether a resource lies in the launch patient's
 * compartment, so a citation can never become a way to read another patient's chart.
 */
export interface CitationField {
  label: string;
  value: string;
}

export interface CitationView {
  reference: string;
  resourceType: string;
  fields: CitationField[];
  resource: FhirResource;
}

export const citationTypePattern = /^[A-Z][A-Za-z]{1,63}$/;

/** Note text shown for a cited note, capped so one huge attachment cannot swamp the page. */
const maxNoteCharacters = 20_000;

type Loose = Record<string, unknown>;

const asRecord = (value: unknown): Loose | undefined =>
  typeof value === 'object' && value !== null && !Array.isArray(value) ? (value as Loose) : undefined;
const asArray = (value: unknown): unknown[] => (Array.isArray(value) ? value : []);
const asString = (value: unknown): string | undefined =>
  typeof value === 'string' && value.length > 0 ? value : undefined;

export { barePatientId };

/**
 * True when the resource is the patient or belongs to it (fhir/patient-scope.ts: the same rule as the
 * event's compartment guard). Anything else is refused, including resources with no patient link at all
 * (Practitioner, Organization): a draft's citations are about the patient.
 */
export const isInPatientCompartment: (resource: FhirResource, patientId: string) => boolean =
  belongsToPatient;

function codeableText(value: unknown): string | undefined {
  const concept = asRecord(value);
  if (!concept) return undefined;
  const coding = asArray(concept.coding).map(asRecord);
  return (
    asString(concept.text) ??
    coding.map((entry) => asString(entry?.display)).find(Boolean) ??
    coding.map((entry) => asString(entry?.code)).find(Boolean)
  );
}

function firstCodeableText(value: unknown): string | undefined {
  return asArray(value).map(codeableText).find(Boolean);
}

function periodText(value: unknown): string | undefined {
  const period = asRecord(value);
  if (!period) return undefined;
  const start = asString(period.start);
  const end = asString(period.end);
  if (start && end) return `${start} to ${end}`;
  return start ?? end;
}

function quantityText(value: unknown): string | undefined {
  const quantity = asRecord(value);
  if (!quantity || quantity.value === undefined) return undefined;
  const unit = asString(quantity.unit) ?? asString(quantity.code) ?? '';
  return `${String(quantity.value)} ${unit}`.trim();
}

function attachmentText(resource: Loose): string | undefined {
  for (const content of asArray(resource.content)) {
    const attachment = asRecord(asRecord(content)?.attachment);
    const data = asString(attachment?.data);
    const contentType = asString(attachment?.contentType) ?? '';
    if (!data || !/^text\//i.test(contentType)) continue;
    const text = Buffer.from(data, 'base64').toString('utf8');
    return text.length > maxNoteCharacters ? `${text.slice(0, maxNoteCharacters)}\n[... truncated]` : text;
  }
  return undefined;
}

function questionnaireAnswerText(answer: QuestionnaireResponseItemAnswer): string {
  if (answer.valueBoolean !== undefined) return answer.valueBoolean ? 'yes' : 'no';
  if (answer.valueInteger !== undefined) return String(answer.valueInteger);
  return answer.valueCoding?.display ?? answer.valueCoding?.code ?? answer.valueString ?? '';
}

export function describeCitation(resource: FhirResource): CitationView {
  const loose = resource as unknown as Loose;
  const fields: CitationField[] = [];
  const add = (label: string, value: string | undefined) => {
    if (value) fields.push({ label, value });
  };
  if (resource.resourceType === 'Patient') {
    add('Name', personName(resource.name));
    add('Birth date', asString(loose.birthDate));
    add('Gender', asString(loose.gender));
  }
  add(
    'What',
    codeableText(loose.code) ??
      codeableText(loose.medicationCodeableConcept) ??
      codeableText(loose.vaccineCode) ??
      firstCodeableText(loose.type) ??
      asString(asRecord(loose.class)?.display) ??
      asString(asRecord(loose.class)?.code),
  );
  add(
    'Value',
    quantityText(loose.valueQuantity) ??
      codeableText(loose.valueCodeableConcept) ??
      asString(loose.valueString),
  );
  const components = asArray(loose.component)
    .map((entry) => {
      const component = asRecord(entry);
      const value = quantityText(component?.valueQuantity) ?? codeableText(component?.valueCodeableConcept);
      const name = codeableText(component?.code);
      return name && value ? `${name}: ${value}` : undefined;
    })
    .filter(Boolean);
  if (components.length > 0) add('Components', components.join('; '));
  add('Status', codeableText(loose.clinicalStatus) ?? asString(loose.docStatus) ?? asString(loose.status));
  add(
    'When',
    asString(loose.effectiveDateTime) ??
      periodText(loose.effectivePeriod) ??
      asString(loose.onsetDateTime) ??
      asString(loose.performedDateTime) ??
      periodText(loose.performedPeriod) ??
      asString(loose.occurrenceDateTime) ??
      asString(loose.authoredOn) ??
      periodText(loose.period) ??
      asString(loose.recordedDate) ??
      asString(loose.date) ??
      asString(loose.issued),
  );
  add('Dosage', asString(asRecord(asArray(loose.dosageInstruction)[0])?.text));
  add('Reaction', firstCodeableText(asRecord(asArray(loose.reaction)[0])?.manifestation));
  if (resource.resourceType === 'DocumentReference') add('Note text', attachmentText(loose));
  if (resource.resourceType === 'QuestionnaireResponse') {
    // The patient's pre-visit answers, each question as it was asked, beside the briefing that cites them.
    add('Answered', asString(loose.authored));
    for (const item of resource.item?.slice(0, 60) ?? [])
      add(item.text ?? item.linkId, (item.answer ?? []).map(questionnaireAnswerText).join(', '));
  }
  return {
    reference: `${resource.resourceType}/${resource.id}`,
    resourceType: resource.resourceType,
    fields,
    resource,
  };
}

/** The longest side of an image shown in the review app: a thumbnail beside the line, the same picture larger in the citation view. */
export const citationImageSizes = { thumbnail: 160, full: 896 } as const;

const citationImageLimits = { maxInputBytes: 20_971_520, maxInputPixels: 60_000_000 };

function imageAttachmentOf(resource: FhirResource): Attachment | undefined {
  const isImage = (attachment: Attachment | undefined): attachment is Attachment =>
    Boolean(attachment?.contentType?.toLowerCase().startsWith('image/'));
  if (resource.resourceType === 'Media') return isImage(resource.content) ? resource.content : undefined;
  if (resource.resourceType === 'DocumentReference')
    return resource.content?.map((content) => content.attachment).find(isImage);
  if (resource.resourceType === 'DiagnosticReport') return resource.presentedForm?.find(isImage);
  return undefined;
}

/**
 * The image a cited Media, DocumentReference or DiagnosticReport holds, read with the clinician's own
 * client (their token: the EHR decides what they may see), checked to be an image and downscaled to
 * `maxDimension`, as a base64 JPEG. Undefined when the resource holds no image. A Binary that names its
 * context must name the cited resource or the launch patient.
 */
export async function citationImage(
  client: Pick<FhirClient, 'get' | 'read'>,
  resource: FhirResource,
  patientId: string,
  maxDimension: number,
  options: { pacs?: PacsAccess } = {},
): Promise<{ contentType: 'image/jpeg'; data: string; width: number; height: number } | undefined> {
  if (resource.resourceType === 'ImagingStudy') {
    if (!options.pacs) return undefined;
    return prepared(await studyPicture(client, resource, patientId, options.pacs), maxDimension);
  }
  const attachment = imageAttachmentOf(resource);
  if (!attachment) return undefined;
  let bytes: Uint8Array;
  if (attachment.data !== undefined) bytes = Buffer.from(attachment.data, 'base64');
  else if (attachment.url) {
    const binary = await client.get<Binary>(attachment.url);
    const context = binary?.securityContext?.reference?.replace(/\/_history\/[^/]+$/, '');
    const allowed = [`${resource.resourceType}/${resource.id}`, `Patient/${barePatientId(patientId)}`];
    if (
      binary?.resourceType !== 'Binary' ||
      typeof binary.data !== 'string' ||
      (context && !allowed.some((reference) => context === reference || context.endsWith(`/${reference}`)))
    )
      throw outcomeError('forbidden', 'the image does not belong to the cited resource', 403);
    bytes = Buffer.from(binary.data, 'base64');
  } else return undefined;
  return prepared(bytes, maxDimension);
}

/**
 * A cited study's picture from the PACS: the clinician's token has read the study (the EHR decided they may see
 * it) and reads the patient and the study's Endpoint; the PACS, which knows no EHR token, is asked by the service
 * with the same checks as for drafts (a configured base, the PACS's PatientID one of the patient's identifiers).
 */
async function studyPicture(
  client: Pick<FhirClient, 'read'>,
  study: ImagingStudy,
  patientId: string,
  pacs: PacsAccess,
): Promise<Uint8Array> {
  const patient = await client.read<Patient>('Patient', barePatientId(patientId));
  try {
    return await renderedStudyImage(study, patient, pacs, (id) => client.read<Endpoint>('Endpoint', id));
  } catch (error) {
    if (!(error instanceof DicomWebError)) throw error;
    const status = { unavailable: 503, 'not-found': 404, 'no-image': 404, refused: 403 }[error.problem];
    throw outcomeError(
      status === 403 ? 'forbidden' : status === 503 ? 'transient' : 'not-found',
      `the study's picture: ${error.message}`,
      status,
    );
  }
}

async function prepared(
  bytes: Uint8Array,
  maxDimension: number,
): Promise<{ contentType: 'image/jpeg'; data: string; width: number; height: number }> {
  try {
    const prepared = await prepareImageOffThread(bytes, { ...citationImageLimits, maxDimension });
    return {
      contentType: 'image/jpeg',
      data: Buffer.from(prepared.jpeg).toString('base64'),
      width: prepared.width,
      height: prepared.height,
    };
  } catch (error) {
    if (error instanceof ImageRejectedError)
      throw outcomeError('invalid', `the cited image cannot be shown (${error.problem})`, 422);
    throw error;
  }
}
