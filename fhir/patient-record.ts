import type {
  AllergyIntolerance,
  Condition,
  DocumentReference,
  Encounter,
  FhirResource,
  Immunization,
  MedicationRequest,
  Observation,
  Patient,
  Procedure,
} from 'fhir/r4.js';

/**
 * Everything retrieved about one patient while processing one event. Agents, rules and the
 * citation verifier read only this: it is the compartment of the event's patient, and the set of
 * resources a draft may cite.
 */
export interface ClinicalNote {
  /** `DocumentReference/<id>`, the citation a summary line uses. */
  reference: string;
  id: string;
  versionId: string | undefined;
  date: string | undefined;
  title: string;
  /** Decoded text of the note. Patient data: never log it. */
  text: string;
}

/**
 * A resource the retrieval had to leave out, so the draft can say what it did not read instead of
 * silently summarising less. Only references and reasons: nothing from the resource's content.
 */
export interface RecordOmission {
  /** `DocumentReference/<id>` of the note whose text could not be read. */
  reference: string;
  /**
   * too-large: its attachment was over the response cap (fhir.maxResponseBytes) or a PDF over its size limit;
   * no-text-layer: a PDF with no text (a scan); unreadable: an attachment that is not what its type says, or is
   * malformed (RTF, PDF); timed-out: a PDF whose text was not read within its time limit.
   */
  reason: 'too-large' | 'no-text-layer' | 'unreadable' | 'timed-out';
}

export interface PatientRecord {
  patient: Patient;
  /** The encounter the event is about, as re-read from the server. */
  encounter: Encounter;
  conditions: Condition[];
  medications: MedicationRequest[];
  allergies: AllergyIntolerance[];
  observations: Observation[];
  encounters: Encounter[];
  procedures: Procedure[];
  immunizations: Immunization[];
  /** The note resources as retrieved (without their decoded text). */
  noteResources: DocumentReference[];
  notes: ClinicalNote[];
  /** What was left out of this record and why (absent or empty: nothing was). */
  omitted?: RecordOmission[];
  /**
   * Resources of the further types asked for (what the site's CQL rules read beyond the lists above,
   * such as MedicationStatement or ServiceRequest), all in one list.
   */
  additional?: FhirResource[];
  /** Further types the server refused to search (with its status): rules reading them cannot be trusted. */
  unreadTypes?: { resourceType: string; status: number }[];
  /**
   * What MedSigLIP saw in the record's images (labels over the site's threshold), as preliminary Observations
   * derived from the image; rules read them as %imageFindings. Never written, never citable.
   */
  imageFindings?: Observation[];
  /**
   * What the site's clinical content policy decided (agents/clinical-content-policy.ts): how many active findings
   * and other entries it took out (counts only, never which), and the `Condition/<id>`s it counts as social history.
   */
  contentPolicy?: { withheldFindings: number; withheldEntries: number; socialHistory: string[] };
  /**
   * The instant (ISO 8601, UTC) the record was cut at: what existed by the end of the encounter, or by now
   * for a visit still to come (fhir/record-as-of-visit.ts). Absent: the record as retrieved, uncut.
   */
  asOf?: string;
}

/** The resource types retrieved for a patient's history, besides the Patient itself. */
export const historyResourceTypes = [
  'Condition',
  'MedicationRequest',
  'AllergyIntolerance',
  'Observation',
  'Encounter',
  'Procedure',
  'Immunization',
  'DocumentReference',
] as const;

/**
 * Patient-compartment types that can be loaded for a patient besides the history resource types: each
 * is searched by `patient` and names its patient in `subject`, `patient` or (Coverage) `beneficiary`,
 * which the compartment guard checks. A rule reading any other type is refused when it loads.
 */
export const additionalHistoryTypes = [
  'MedicationStatement',
  'MedicationAdministration',
  'MedicationDispense',
  'ServiceRequest',
  'DiagnosticReport',
  'CarePlan',
  'CareTeam',
  'Goal',
  'DeviceRequest',
  'DeviceUseStatement',
  'FamilyMemberHistory',
  'Flag',
  'ImmunizationRecommendation',
  'RiskAssessment',
  'ClinicalImpression',
  'EpisodeOfCare',
  'NutritionOrder',
  'Specimen',
  'Communication',
  'CommunicationRequest',
  'ImagingStudy',
  'QuestionnaireResponse',
  'DetectedIssue',
  'Coverage',
  'Claim',
  'ExplanationOfBenefit',
  // Not in any compartment: the ones the patient's medication resources reference are read by id.
  'Medication',
] as const;

export type PatientResourceLists = Omit<
  PatientRecord,
  | 'patient'
  | 'encounter'
  | 'notes'
  | 'omitted'
  | 'additional'
  | 'unreadTypes'
  | 'imageFindings'
  | 'asOf'
  | 'contentPolicy'
>;

/** Every resource in the record, each once. */
export function recordResources(record: PatientRecord): FhirResource[] {
  const all: FhirResource[] = [
    record.patient,
    record.encounter,
    ...record.conditions,
    ...record.medications,
    ...record.allergies,
    ...record.observations,
    ...record.encounters,
    ...record.procedures,
    ...record.immunizations,
    ...record.noteResources,
    ...(record.additional ?? []),
  ];
  const seen = new Set<string>();
  return all.filter((resource) => {
    const key = `${resource.resourceType}/${resource.id}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

/** `Type/id` -> versionId of every resource retrieved: what a citation may point at, and what Provenance lists. */
export function retrievedVersions(record: PatientRecord): Map<string, string | undefined> {
  return new Map(
    recordResources(record).map((resource) => [
      `${resource.resourceType}/${resource.id}`,
      resource.meta?.versionId,
    ]),
  );
}
