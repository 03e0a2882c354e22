import type { CapabilityStatement, CapabilityStatementRestSecurity } from 'fhir/r4.js';

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

/** SMART App Launch's oauth-uris extension: where the authorization server's endpoints are. */
function smartSecurity(oauth: { authorize: string; token: string }): CapabilityStatementRestSecurity {
  return {
    service: [
      {
        coding: [
          {
            system: 'http://terminology.hl7.org/CodeSystem/restful-security-service',
            code: 'SMART-on-FHIR',
          },
        ],
      },
    ],
    extension: [
      {
        url: 'http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris',
        extension: [
          { url: 'authorize', valueUri: oauth.authorize },
          { url: 'token', valueUri: oauth.token },
        ],
      },
    ],
  };
}

export function sandboxCapabilityStatement(
  baseUrl: string | undefined,
  software: string,
  oauth?: { authorize: string; token: string },
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
        documentation: oauth
          ? 'In-memory sandbox: synthetic patients, SMART on FHIR authorization, data lost on restart.'
          : 'In-memory sandbox: synthetic patients, no authentication, data lost on restart.',
        ...(oauth ? { security: smartSecurity(oauth) } : {}),
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
