import { parseSearchRequest } from '@medplum/core';
import type { Encounter, Patient, Practitioner } from 'fhir/r4.js';
import type { Logger } from '../../log.ts';
import type { SandboxEhr } from '../sandbox-ehr.ts';
import { createSandboxAuthorizationServer, type SandboxAuthorizationServer } from './authorization-server.ts';

/**
 * Gives a sandbox EHR its SMART authorization server: a clinician who can sign in (a named Practitioner, seeded
 * when the sandbox has none), a standalone launch's patient picked the way a patient picker's first row would be,
 * and the server attached so the sandbox accepts (and checks) its tokens.
 */
export const sandboxClinician: Practitioner = {
  resourceType: 'Practitioner',
  id: 'sbx-clinician',
  active: true,
  identifier: [{ system: 'urn:ehr-draft-agent:sandbox:practitioner', value: 'sbx-clinician' }],
  name: [
    { use: 'official', prefix: ['Dr.'], given: ['Robin'], family: 'Sandbox', text: 'Dr. Robin Sandbox' },
  ],
  qualification: [{ code: { text: 'Physician (synthetic sandbox clinician)' } }],
};

/** Reads the sandbox's store directly: these lookups are the EHR's own, not a client's request. */
async function search<T>(sandbox: SandboxEhr, query: string): Promise<T[]> {
  const found = await sandbox.repository.searchResources(parseSearchRequest(query));
  return found as unknown as T[];
}

/** A Practitioner with a name (someone who can sign), seeded if the sandbox has none; returns its id. */
export async function ensureSandboxClinician(sandbox: SandboxEhr): Promise<string> {
  const practitioners = await search<Practitioner>(sandbox, 'Practitioner?_count=200');
  const named = practitioners
    .filter((practitioner) => practitioner.id && (practitioner.name ?? []).length > 0)
    .sort((first, second) => (first.id as string).localeCompare(second.id as string));
  if (named.length > 0) return named[0].id as string;
  await sandbox.seed([sandboxClinician]);
  return sandboxClinician.id as string;
}

export async function attachSandboxAuthorization(
  sandbox: SandboxEhr,
  options: {
    issuer: string;
    /** Defaults to the sandbox's own base URL. */
    fhirBaseUrl?: string;
    userTokenLifetimeSeconds?: number;
    backendTokenLifetimeSeconds?: number;
    logger?: Logger;
  },
): Promise<SandboxAuthorizationServer> {
  const fhirBaseUrl = options.fhirBaseUrl ?? sandbox.baseUrl;
  if (!fhirBaseUrl) throw new Error('the sandbox needs its FHIR base URL before an authorization server');
  const clinician = await ensureSandboxClinician(sandbox);
  const server = await createSandboxAuthorizationServer({
    issuer: options.issuer,
    fhirBaseUrl,
    userTokenLifetimeSeconds: options.userTokenLifetimeSeconds,
    backendTokenLifetimeSeconds: options.backendTokenLifetimeSeconds,
    logger: options.logger,
    defaultPractitioner: async () => clinician,
    standaloneContext: async (wantsEncounter) => {
      const patients = await search<Patient>(sandbox, 'Patient?_count=1&_sort=_id');
      const patient = patients[0]?.id;
      if (!patient) return undefined;
      if (!wantsEncounter) return { patient };
      const encounters = await search<Encounter>(
        sandbox,
        `Encounter?patient=Patient/${patient}&_sort=-date&_count=1`,
      );
      return { patient, encounter: encounters[0]?.id };
    },
  });
  sandbox.attachAuthorization(server);
  return server;
}
