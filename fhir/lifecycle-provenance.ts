import type { Provenance } from 'fhir/r4.js';

/**
 * Provenance for what clinicians do to a draft. Sign-off follows reference/shapes/signoff-provenance.json
 * (activity AU, the Practitioner as verifier and signer, the AI draft's version as the revision it
 * came from); edits and rejections use the same frame with their own activity, so every change to a
 * draft is on the record with who did it and to which version.
 */
export interface ClinicianAction {
  /** `DocumentReference/<id>/_history/<version>` (or without version when the server gives none). */
  target: string;
  /** The version the clinician acted on, when it exists in the EHR. */
  revisionOf?: string;
  practitioner: string;
  now: Date;
}

const participantType = 'http://terminology.hl7.org/CodeSystem/provenance-participant-type';
const treatReason = {
  coding: [{ system: 'http://terminology.hl7.org/CodeSystem/v3-ActReason', code: 'TREAT' }],
};

function revisionEntity(revisionOf: string | undefined): Pick<Provenance, 'entity'> {
  return revisionOf ? { entity: [{ role: 'revision', what: { reference: revisionOf } }] } : {};
}

export function buildSignOffProvenance(action: ClinicianAction): Provenance {
  const when = action.now.toISOString();
  return {
    resourceType: 'Provenance',
    target: [{ reference: action.target }],
    recorded: when,
    reason: [treatReason],
    activity: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/v3-DocumentCompletion',
          code: 'AU',
          display: 'authenticated',
        },
      ],
    },
    agent: [
      {
        type: { coding: [{ system: participantType, code: 'verifier' }] },
        who: { reference: action.practitioner },
      },
    ],
    ...revisionEntity(action.revisionOf),
    signature: [
      {
        type: [
          {
            system: 'urn:iso-astm:E1762-95:2013',
            code: '1.2.840.10065.1.12.1.5',
            display: 'Verification Signature',
          },
        ],
        when,
        who: { reference: action.practitioner },
      },
    ],
  };
}

export function buildEditProvenance(action: ClinicianAction): Provenance {
  return {
    resourceType: 'Provenance',
    target: [{ reference: action.target }],
    recorded: action.now.toISOString(),
    reason: [treatReason],
    activity: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation',
          code: 'UPDATE',
          display: 'revise',
        },
      ],
    },
    agent: [
      {
        type: { coding: [{ system: participantType, code: 'author' }] },
        who: { reference: action.practitioner },
      },
    ],
    ...revisionEntity(action.revisionOf),
  };
}

export function buildRejectProvenance(action: ClinicianAction & { reason: string }): Provenance {
  return {
    resourceType: 'Provenance',
    target: [{ reference: action.target }],
    recorded: action.now.toISOString(),
    reason: [treatReason, { text: action.reason }],
    activity: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/v3-DataOperation',
          code: 'NULLIFY',
          display: 'nullify',
        },
      ],
    },
    agent: [
      {
        type: { coding: [{ system: participantType, code: 'verifier' }] },
        who: { reference: action.practitioner },
      },
    ],
    ...revisionEntity(action.revisionOf),
  };
}
