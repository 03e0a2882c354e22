/**
 * The hospital's PACS over DICOMweb: QIDO-RS to check whose study it is, WADO-RS rendered frames to
 * get a picture (the PACS renders the DICOM pixels to JPEG or PNG, so no DICOM codec runs here). Only
 * bases the site configured are ever contacted: an ImagingStudy's Endpoint that points elsewhere is
 * refused before any request, so a record cannot aim the service at another host.
 */
export interface DicomWebOptions {
  /** DICOMweb bases the service may contact (e.g. https://pacs.example.org/dicom-web). */
  allowedBaseUrls: readonly string[];
  timeoutMs: number;
  /** Largest rendered image accepted, in bytes. */
  maxResponseBytes: number;
  accessToken?: string;
}

export type DicomWebProblem =
  /** Connection refused, timed out, 5xx: the PACS is down or slow. */
  | 'unavailable'
  /** The study or instance is not in the PACS. */
  | 'not-found'
  /** The PACS has the object but renders no picture of it (no pixel data, not an image). */
  | 'no-image'
  /** The PACS holds this study for another patient, or its answer cannot be trusted. */
  | 'refused';

export class DicomWebError extends Error {
  readonly problem: DicomWebProblem;

  constructor(problem: DicomWebProblem, message: string) {
    super(message);
    this.name = 'DicomWebError';
    this.problem = problem;
  }
}

/** DICOM UIDs: digits and dots, at most 64 characters. Anything else is never put in a URL. */
const uidPattern = /^[0-9]+(\.[0-9]+)*$/;

export function isDicomUid(value: string | undefined): value is string {
  return value !== undefined && value.length <= 64 && uidPattern.test(value);
}

/** The study UID of an ImagingStudy identifier (`urn:oid:1.2.3`, system urn:dicom:uid). */
export function studyUidFromIdentifier(value: string | undefined): string | undefined {
  const uid = value?.replace(/^urn:oid:/, '');
  return isDicomUid(uid) ? uid : undefined;
}

function withoutTrailingSlash(url: string): string {
  return url.replace(/\/+$/, '');
}

export class DicomWebClient {
  readonly #options: DicomWebOptions;
  readonly #allowed: string[];

  constructor(options: DicomWebOptions) {
    this.#options = options;
    this.#allowed = options.allowedBaseUrls.map(withoutTrailingSlash);
  }

  /** The configured base an address is under, or undefined (refused). */
  allowedBase(address: string): string | undefined {
    const bare = withoutTrailingSlash(address);
    return this.#allowed.find((base) => bare === base || bare.startsWith(`${base}/`)) ? bare : undefined;
  }

  async #get(url: string, accept: string): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(url, {
        headers: {
          accept,
          ...(this.#options.accessToken ? { authorization: `Bearer ${this.#options.accessToken}` } : {}),
        },
        redirect: 'error',
        signal: AbortSignal.timeout(this.#options.timeoutMs),
      });
    } catch {
      throw new DicomWebError('unavailable', 'the PACS could not be reached in time');
    }
    if (response.status === 404) {
      await response.body?.cancel();
      throw new DicomWebError('not-found', 'the PACS does not hold it');
    }
    if (response.status >= 500 || response.status === 429 || response.status === 408) {
      await response.body?.cancel();
      throw new DicomWebError('unavailable', `the PACS answered ${response.status}`);
    }
    return response;
  }

  async #body(response: Response): Promise<Uint8Array> {
    const declared = Number(response.headers.get('content-length') ?? '0');
    if (declared > this.#options.maxResponseBytes) {
      await response.body?.cancel();
      throw new DicomWebError('refused', 'the PACS answer is over the size cap');
    }
    const reader = response.body?.getReader();
    const chunks: Uint8Array[] = [];
    let total = 0;
    try {
      for (;;) {
        const { done, value } = (await reader?.read()) ?? { done: true, value: undefined };
        if (done || !value) break;
        total += value.length;
        if (total > this.#options.maxResponseBytes) {
          await reader?.cancel();
          throw new DicomWebError('refused', 'the PACS answer is over the size cap');
        }
        chunks.push(value);
      }
    } catch (error) {
      if (error instanceof DicomWebError) throw error;
      throw new DicomWebError('unavailable', 'the PACS answer was cut off or timed out');
    }
    return Buffer.concat(chunks);
  }

  /** The PatientID (0010,0020) the PACS records for a study (QIDO-RS). */
  async studyPatientId(base: string, studyUid: string): Promise<string> {
    if (!isDicomUid(studyUid)) throw new DicomWebError('refused', 'not a DICOM UID');
    const url = `${base}/studies?StudyInstanceUID=${studyUid}&includefield=00100020`;
    const response = await this.#get(url, 'application/dicom+json');
    if (!response.ok) {
      await response.body?.cancel();
      throw new DicomWebError('refused', `the PACS answered ${response.status} to the study search`);
    }
    let matches: unknown;
    try {
      matches = JSON.parse(Buffer.from(await this.#body(response)).toString('utf8'));
    } catch (error) {
      if (error instanceof DicomWebError) throw error;
      throw new DicomWebError('refused', 'the PACS study search answered garbage');
    }
    if (!Array.isArray(matches)) throw new DicomWebError('refused', 'the PACS study search answered garbage');
    if (matches.length === 0) throw new DicomWebError('not-found', 'the PACS does not hold the study');
    const patientIds = new Set(
      matches.map((match) => (match as Record<string, { Value?: unknown[] }>)?.['00100020']?.Value?.[0]),
    );
    const [patientId] = [...patientIds];
    if (patientIds.size !== 1 || typeof patientId !== 'string' || patientId === '')
      throw new DicomWebError('refused', 'the PACS names no single patient for the study');
    return patientId;
  }

  /** One instance's first frame rendered by the PACS (WADO-RS), as JPEG or PNG bytes. */
  async renderedInstance(
    base: string,
    uids: { study: string; series: string; instance: string },
  ): Promise<Uint8Array> {
    if (![uids.study, uids.series, uids.instance].every(isDicomUid))
      throw new DicomWebError('refused', 'not a DICOM UID');
    const url = `${base}/studies/${uids.study}/series/${uids.series}/instances/${uids.instance}/rendered`;
    // One media type: JPEG is what every PACS renders (PS3.18 requires it), and Orthanc's DICOMweb plugin
    // answers 400 to an Accept listing several.
    const response = await this.#get(url, 'image/jpeg');
    if (!response.ok) {
      await response.body?.cancel();
      // 400, 406 and the like for an object the PACS holds: it has no picture to render (no pixel data).
      throw new DicomWebError('no-image', `the PACS answered ${response.status} to the rendering`);
    }
    return this.#body(response);
  }
}
