import type {
  Binary,
  Bundle,
  DiagnosticReport,
  DocumentReference,
  FhirResource,
  Media,
  Patient,
} from 'fhir/r4.js';
import type { FhirClient } from './fhir-client.ts';
import { isFhirId } from './fhir-id.ts';
import { OperationOutcomeError, outcomeError } from './operation-outcome.ts';

/**
 * The compartment guard. While one event is processed, everything that reads FHIR gets a
 * PatientScopedReader bound to that event's patient instead of the FhirClient: it can only search
 * with that patient as the subject, it checks every resource that comes back, and it refuses reads of
 * another patient before any request is made. Later code, tools and prompts that are handed this
 * reader (and not the client) have no way to reach another patient's data.
 */

/**
 * Types outside any patient's compartment that a record may legitimately point at (who wrote a note,
 * which organisation): they hold no patient data, so reading them by id is allowed.
 */
const sharedTypes = new Set([
  'Practitioner',
  'PractitionerRole',
  'Organization',
  'Location',
  'Medication',
  // Where an ImagingStudy's images are served (a PACS's DICOMweb base): an address, no patient data.
  'Endpoint',
]);

/** Resources whose attachments may be fetched as Binary once the reader has admitted them. */
type AttachmentHolder = DocumentReference | Media | DiagnosticReport;
const attachmentHolderTypes = new Set(['DocumentReference', 'Media', 'DiagnosticReport']);

/** Search parameters that name a patient: the reader sets these itself and refuses them from callers. */
const patientParameters = new Set([
  'patient',
  'subject',
  'beneficiary',
  '_id',
  '_has',
  '_include',
  '_revinclude',
]);

/**
 * The one rule for a patient reference: relative or absolute (`[base]/Patient/<id>`), optionally
 * versioned (`/_history/<v>`), with an id as FHIR allows it.
 */
const patientReferencePattern = /(?:^|\/)Patient\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/;

/** The patient id a reference names, or undefined when it names no patient. */
export function patientIdInReference(reference: string | undefined): string | undefined {
  return reference ? patientReferencePattern.exec(reference)?.[1] : undefined;
}

/** The patient id behind `123`, `Patient/123` or `https://ehr/fhir/Patient/123` (a launch context's patient). */
export function barePatientId(value: string): string {
  return patientIdInReference(value) ?? value;
}

/**
 * The patient a resource belongs to, as `Patient/<id>`: the Patient itself, else its subject, else its
 * patient reference (Coverage: its beneficiary). A subject that names something else (a Group) is not
 * overruled by a `patient` element.
 */
export function patientReferenceOf(resource: FhirResource): string | undefined {
  if (resource.resourceType === 'Patient') return `Patient/${resource.id}`;
  const holder = resource as {
    subject?: { reference?: string };
    patient?: { reference?: string };
    beneficiary?: { reference?: string };
  };
  // Coverage names its patient as the beneficiary (what its `patient` search parameter matches).
  const reference =
    holder.subject?.reference ??
    holder.patient?.reference ??
    (resource.resourceType === 'Coverage' ? holder.beneficiary?.reference : undefined);
  const patientId = patientIdInReference(reference);
  return patientId ? `Patient/${patientId}` : undefined;
}

/**
 * Whether a resource belongs to a patient (given as an id or a reference): the one answer for the
 * event's compartment guard, the verifier and the review app's citations. A resource naming no
 * patient (Practitioner, Organization) belongs to none.
 */
export function belongsToPatient(resource: FhirResource, patient: string): boolean {
  return patientReferenceOf(resource) === `Patient/${barePatientId(patient)}`;
}

export function assertInCompartment(resource: FhirResource, patientId: string): void {
  if (!belongsToPatient(resource, patientId)) {
    throw outcomeError(
      'forbidden',
      `${resource.resourceType}/${resource.id} does not belong to the event's patient; refused`,
      403,
    );
  }
}

/** Whether a (possibly absolute or versioned) reference points at `Type/id`. */
function sameReference(reference: string, typeAndId: string): boolean {
  const bare = reference.replace(/\/_history\/[^/]+$/, '');
  return bare === typeAndId || bare.endsWith(`/${typeAndId}`);
}

function refused(what: string): OperationOutcomeError {
  return outcomeError('forbidden', `${what}: outside the event's patient compartment; refused`, 403);
}

export interface ScopedRead {
  reference: string;
  versionId: string | undefined;
}

export class PatientScopedReader {
  readonly patientId: string;
  readonly #client: FhirClient;
  /** Every resource read through this reader, in order: what the event's processing actually saw. */
  readonly reads: ScopedRead[] = [];
  /** `Type/id` of notes, media and reports whose attachments this reader has vetted (only those may be fetched as Binary). */
  readonly #vettedHolders = new Set<string>();

  constructor(client: FhirClient, patientId: string) {
    if (!isFhirId(patientId)) throw outcomeError('invalid', 'not a patient id', 422);
    this.#client = client;
    this.patientId = patientId;
  }

  get patientReference(): string {
    return `Patient/${this.patientId}`;
  }

  /** The server's round trips so far (the client is shared; this is for metrics only). */
  get client(): Pick<FhirClient, 'requestCount' | 'baseUrl'> {
    return this.#client;
  }

  /** Checks a resource obtained some other way (a batch entry) and records it as read. */
  admit<T extends FhirResource>(resource: T): T {
    if (sharedTypes.has(resource.resourceType)) return this.#record(resource);
    assertInCompartment(resource, this.patientId);
    if (attachmentHolderTypes.has(resource.resourceType))
      this.#vettedHolders.add(`${resource.resourceType}/${resource.id}`);
    return this.#record(resource);
  }

  #record<T extends FhirResource>(resource: T): T {
    this.reads.push({
      reference: `${resource.resourceType}/${resource.id}`,
      versionId: resource.meta?.versionId,
    });
    return resource;
  }

  async read<T extends FhirResource>(resourceType: T['resourceType'], id: string): Promise<T> {
    if (resourceType === 'Patient' && id !== this.patientId) throw refused(`Patient/${id}`);
    if (resourceType === 'Binary') throw refused('Binary by id (use noteAttachment)');
    return this.admit(await this.#client.read<T>(resourceType, id));
  }

  /** The search parameters for a type, scoped to this patient; refuses a caller's attempt to widen them. */
  scopedParams(
    resourceType: string,
    params: Record<string, string | number> = {},
  ): Record<string, string | number> {
    if (sharedTypes.has(resourceType) || resourceType === 'Binary') throw refused(`${resourceType} search`);
    for (const key of Object.keys(params)) {
      const name = key.split(':')[0].split('.')[0];
      if (patientParameters.has(name)) throw refused(`search parameter ${key}`);
    }
    return resourceType === 'Patient'
      ? { ...params, _id: this.patientId }
      : { ...params, patient: this.patientReference };
  }

  async search<T extends FhirResource>(
    resourceType: T['resourceType'],
    params: Record<string, string | number> = {},
  ): Promise<T[]> {
    const results = await this.#client.search<T>(resourceType, this.scopedParams(resourceType, params));
    return results.map((resource) => this.admit(resource));
  }

  /** Admits the results of a search made in a batch, following its next links through the client. */
  async collectSearchPages<T extends FhirResource>(
    resourceType: T['resourceType'],
    firstPage: Bundle,
  ): Promise<T[]> {
    const results = await this.#client.collectSearchPages<T>(resourceType, firstPage);
    return results.map((resource) => this.admit(resource));
  }

  /** Whether the server takes batch Bundles (from its CapabilityStatement, read once). */
  supportsBatch(): Promise<boolean> {
    return this.#client.supportsBatch();
  }

  /**
   * The patient and several searches in one batch Bundle, each search scoped exactly as search()
   * scopes it. Search results come back as Bundles to pass to collectSearchPages (which admits every
   * entry); an entry the server refused comes back as its OperationOutcomeError.
   */
  async batch(
    searches: { resourceType: string; params?: Record<string, string | number> }[],
  ): Promise<{ patient: Patient | OperationOutcomeError; searches: (Bundle | OperationOutcomeError)[] }> {
    const urls = searches.map(({ resourceType, params }) => {
      const query = new URLSearchParams(
        Object.entries(this.scopedParams(resourceType, params)).map(([key, value]) => [key, String(value)]),
      );
      return { url: `${resourceType}?${query}` };
    });
    const [patient, ...results] = await this.#client.batch([{ url: this.patientReference }, ...urls]);
    return {
      patient: patient instanceof OperationOutcomeError ? patient : this.admit(patient as Patient),
      searches: results.map((result) =>
        result instanceof OperationOutcomeError || result.resourceType === 'Bundle'
          ? (result as Bundle | OperationOutcomeError)
          : outcomeError('invalid', 'a batch search answered with something other than a Bundle', 502),
      ),
    };
  }

  /**
   * The Binary behind a note's attachment URL: only for a note this reader has already admitted, and
   * only on the FHIR server's own origin (the client refuses others before any request is made).
   */
  async noteAttachment(document: DocumentReference, url: string): Promise<Binary> {
    return this.attachment(document, url);
  }

  /** The Binary behind an attachment of an admitted note, Media or DiagnosticReport (same checks as noteAttachment). */
  async attachment(holder: AttachmentHolder, url: string): Promise<Binary> {
    this.#assertVetted(holder);
    return this.#checkBinary(holder, await this.#client.get<Binary>(url));
  }

  /**
   * Several notes' Binaries in one batch Bundle (same checks as noteAttachment). URLs outside the FHIR
   * base (but on its origin) are fetched on their own; an entry the server refused comes back as its error.
   */
  async noteAttachments(
    notes: { document: DocumentReference; url: string }[],
  ): Promise<(Binary | OperationOutcomeError)[]> {
    for (const { document } of notes) this.#assertVetted(document);
    const base = `${this.#client.baseUrl}/`;
    // resolveUrl refuses another origin before anything is sent.
    const relative = notes.map(({ url }) => {
      const absolute = this.#client.resolveUrl(url);
      return absolute.startsWith(base) ? absolute.slice(base.length) : undefined;
    });
    const batched = notes.flatMap((_note, index) => {
      const url = relative[index];
      return url ? [{ index, url }] : [];
    });
    const results = new Array<Binary | OperationOutcomeError>(notes.length);
    if (batched.length > 0) {
      const answers = await this.#client.batch(batched.map(({ url }) => ({ url })));
      batched.forEach(({ index }, position) => {
        const answer = answers[position];
        results[index] =
          answer instanceof OperationOutcomeError
            ? answer
            : this.#checkBinary(notes[index].document, answer as Binary);
      });
    }
    for (const [index, note] of notes.entries()) {
      if (!relative[index]) results[index] = await this.noteAttachment(note.document, note.url);
    }
    return results;
  }

  #assertVetted(holder: AttachmentHolder): void {
    if (!holder.id || !this.#vettedHolders.has(`${holder.resourceType}/${holder.id}`))
      throw refused(`attachment of ${holder.resourceType}/${holder.id}`);
  }

  #checkBinary(holder: AttachmentHolder, binary: Binary): Binary {
    if (binary?.resourceType !== 'Binary') throw refused(`attachment of ${holder.resourceType}/${holder.id}`);
    const context = binary.securityContext?.reference;
    // A Binary that names its context must name this note (media, report) or this patient.
    if (
      context &&
      !sameReference(context, `${holder.resourceType}/${holder.id}`) &&
      !sameReference(context, this.patientReference)
    ) {
      throw refused(`Binary/${binary.id}`);
    }
    return binary;
  }
}
