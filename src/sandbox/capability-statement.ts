import type { CapabilityStatement } from 'fhir/r4.js';

/** The resource types the sandbox advertises (it stores any R4 type; these are the ones the service uses). */
export const advertisedResourceTypes = [
  'Patient',
  'Encounter',
  'Condition',
  'Observation',
  'MedicationRequest',
  'AllergyIntolerance',
  'Procedure',
  'Immunization',
  'DocumentReference',
  'Binary',
  'Provenance',
  'Device',
  'Practitioner',
  'PractitionerRole',
  'Organization',
  'Location',
  'Subscription',
] as const;

export function sandboxCapabilityStatement(
  baseUrl: string | undefined,
  software: string,
): CapabilityStatement {
  const interactions = [
    'read',
    'vread',
    'update',
    'patch',
    'delete',
    'history-instance',
    'create',
    'search-type',
  ] as const;
  return {
    resourceType: 'CapabilityStatement',
    status: 'active',
    date: '2026-01-01',
    kind: 'instance',
    software: { name: software },
    implementation: {
      description: 'Sandbox EHR with synthetic data only',
      ...(baseUrl ? { url: baseUrl } : {}),
    },
    fhirVersion: '4.0.1',
    format: ['application/fhir+json', 'json'],
    rest: [
      {
        mode: 'server',
        documentation: 'In-memory sandbox: synthetic patients, no authentication, data lost on restart.',
        resource: advertisedResourceTypes.map((type) => ({
          type,
          versioning: 'versioned',
          readHistory: true,
          updateCreate: true,
          conditionalCreate: true,
          interaction: interactions.map((code) => ({ code })),
          ...(type === 'Subscription'
            ? {
                supportedProfile: [
                  'http://hl7.org/fhir/uv/subscriptions-backport/StructureDefinition/backport-subscription',
                ],
                operation: [
                  {
                    name: 'status',
                    definition:
                      'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-status',
                  },
                  {
                    name: 'events',
                    definition:
                      'http://hl7.org/fhir/uv/subscriptions-backport/OperationDefinition/backport-subscription-events',
                  },
                ],
              }
            : {}),
        })),
        interaction: [{ code: 'transaction' }, { code: 'batch' }],
      },
    ],
  };
}
