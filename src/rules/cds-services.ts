import type { Bundle, FhirResource } from 'fhir/r4.js';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { recordFromResources } from './record-from-bundle.ts';
import type { RuleTrigger } from './rule-schema.ts';
import type { RuleSet } from './rule-set.ts';

/**
 * The CDS Hooks services this engine offers, with prefetch templates for everything the rules read,
 * and the step back from a prefetch to a PatientRecord. When the EHR honours every template the
 * service answers without a single FHIR call.
 */
export interface CdsServiceDefinition {
  hook: 'patient-view' | 'encounter-start';
  id: string;
  title: string;
  description: string;
  prefetch: Record<string, string>;
}

const patientPrefetch: Record<string, string> = {
  patient: 'Patient/{{context.patientId}}',
  conditions: 'Condition?patient={{context.patientId}}',
  medications: 'MedicationRequest?patient={{context.patientId}}',
  allergies: 'AllergyIntolerance?patient={{context.patientId}}',
  observations: 'Observation?patient={{context.patientId}}',
  encounters: 'Encounter?patient={{context.patientId}}',
  procedures: 'Procedure?patient={{context.patientId}}',
  immunizations: 'Immunization?patient={{context.patientId}}',
};

export const cdsServices: CdsServiceDefinition[] = [
  {
    hook: 'patient-view',
    id: 'guideline-nudges-patient-view',
    title: 'Guideline-aligned nudges',
    description:
      "Guideline nudges that the site's rules select for this patient (drafted ones when a draft exists, otherwise evaluated now).",
    prefetch: patientPrefetch,
  },
  {
    hook: 'encounter-start',
    id: 'guideline-nudges-encounter-start',
    title: 'Guideline-aligned nudges at encounter start',
    description:
      "Guideline nudges and visit urgency that the site's rules select for the encounter being started.",
    prefetch: { ...patientPrefetch, encounter: 'Encounter/{{context.encounterId}}' },
  },
];

/**
 * The services as discovery shows them for a rule set: the standard templates plus one per further
 * type its CQL reads (`medicationStatement: MedicationStatement?patient=...`), so an EHR that honours
 * prefetch sends everything the rules look at.
 */
export function cdsServicesFor(ruleSet: Pick<RuleSet, 'additionalResourceTypes'>): CdsServiceDefinition[] {
  // Medications are in no patient's compartment: they come along with the resources that reference them.
  const withMedications = ruleSet.additionalResourceTypes.includes('Medication');
  const template = (resourceType: string) =>
    `${resourceType}?patient={{context.patientId}}${withMedications && medicationReferrers.has(resourceType) ? `&_include=${resourceType}:medication` : ''}`;
  const additional = Object.fromEntries(
    ruleSet.additionalResourceTypes
      .filter((resourceType) => resourceType !== 'Medication')
      .map((resourceType) => [prefetchKey(resourceType), template(resourceType)]),
  );
  return cdsServices.map((service) => ({
    ...service,
    prefetch: {
      ...service.prefetch,
      ...(withMedications ? { medications: template('MedicationRequest') } : {}),
      ...additional,
    },
  }));
}

const medicationReferrers = new Set([
  'MedicationRequest',
  'MedicationStatement',
  'MedicationAdministration',
  'MedicationDispense',
]);

function prefetchKey(resourceType: string): string {
  return `${resourceType[0].toLowerCase()}${resourceType.slice(1)}`;
}

export function triggerForHook(hook: CdsServiceDefinition['hook']): RuleTrigger {
  return hook;
}

/** The record the prefetch holds, or undefined when any template was not filled. */
export function recordFromPrefetch(
  service: CdsServiceDefinition,
  prefetch: Record<string, unknown> | undefined,
  context: { patientId: string; encounterId?: string },
): PatientRecord | undefined {
  if (!prefetch) return undefined;
  const resources: FhirResource[] = [];
  for (const key of Object.keys(service.prefetch)) {
    const value = prefetch[key];
    if (value === undefined || value === null || typeof value !== 'object') return undefined;
    const resource = value as FhirResource;
    if (resource.resourceType === 'Bundle') {
      for (const entry of (resource as Bundle).entry ?? []) {
        // Search bundles may carry OperationOutcomes (search mode `outcome`); they are not patient data.
        if (entry.resource && entry.resource.resourceType !== 'OperationOutcome')
          resources.push(entry.resource as FhirResource);
      }
    } else {
      resources.push(resource);
    }
  }
  const patient = resources.find((resource) => resource.resourceType === 'Patient');
  if (!patient || patient.id !== context.patientId) return undefined;
  // The same encounter can come from `encounter` and from `encounters`: keep one copy.
  const seen = new Set<string>();
  const unique = resources.filter((resource) => {
    const key = `${resource.resourceType}/${resource.id}`;
    if (seen.has(key) || !belongsTo(resource, context.patientId)) return false;
    seen.add(key);
    return true;
  });
  return recordFromResources(unique, context.encounterId);
}

/** Compartment guard: a prefetched resource that names another patient is not this patient's data. */
function belongsTo(resource: FhirResource, patientId: string): boolean {
  if (resource.resourceType === 'Patient') return resource.id === patientId;
  const owner = resource as {
    subject?: { reference?: string };
    patient?: { reference?: string };
    beneficiary?: { reference?: string };
  };
  const reference =
    owner.subject?.reference ??
    owner.patient?.reference ??
    (resource.resourceType === 'Coverage' ? owner.beneficiary?.reference : undefined);
  return (
    reference === undefined ||
    reference === `Patient/${patientId}` ||
    reference.endsWith(`/Patient/${patientId}`)
  );
}
