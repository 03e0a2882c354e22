import type {
  Bundle,
  DocumentReference,
  Encounter,
  Observation,
  OperationOutcome,
  Patient,
  Provenance,
} from 'fhir/r4.js';
import { afterEach, describe, expect, it } from 'vitest';
import type { SandboxAuthorizationServer } from '../../src/sandbox/authorization/authorization-server.ts';
import type { TokenAccess } from '../../src/sandbox/authorization/scope-enforcement.ts';
import {
  createSandboxEhr,
  type SandboxAuthOptions,
  type SandboxEhr,
  type SandboxRequest,
} from '../../src/sandbox/sandbox-ehr.ts';

/**
 * SMART v2 scopes on every sandbox FHIR request that carries a token: resource type and interaction, batch and
 * transaction entries one by one, `patient/` scopes confined to the launch patient's compartment, 403
 * OperationOutcomes naming the missing scope; loopback callers without a token act as the administrator unless
 * tokens are required. Tokens come from a stand-in verifier (the real server's tokens are tested in
 * authorization-server.test.ts); everything after the token lookup is the sandbox's own code.
 */
const base = 'http://127.0.0.1:9/sandbox/fhir';
let sandbox: SandboxEhr;
const tokens = new Map<string, TokenAccess>();

function observation(id: string, patientId: string): Observation {
  return {
    resourceType: 'Observation',
    id,
    status: 'final',
    code: { text: 'heart rate' },
    subject: { reference: `Patient/${patientId}` },
  };
}

function documentReference(id: string, patientId: string): DocumentReference {
  return {
    resourceType: 'DocumentReference',
    id,
    status: 'current',
    subject: { reference: `Patient/${patientId}` },
    content: [{ attachment: { contentType: 'text/plain', data: 'ZHJhZnQ=' } }],
  };
}

async function sandboxWith(auth: SandboxAuthOptions = {}): Promise<SandboxEhr> {
  const created = createSandboxEhr({ baseUrl: base, auth });
  created.attachAuthorization({
    verifyAccessToken: async (token: string) => tokens.get(token),
    smartConfiguration: () => ({}),
    authorizeUrl: `${base}/authorize`,
    tokenUrl: `${base}/token`,
  } as unknown as SandboxAuthorizationServer);
  await created.seed([
    { resourceType: 'Patient', id: 'pa' },
    { resourceType: 'Patient', id: 'pb' },
    observation('obs-a', 'pa'),
    observation('obs-b', 'pb'),
    documentReference('doc-a', 'pa'),
    documentReference('doc-b', 'pb'),
    { resourceType: 'Practitioner', id: 'dr', name: [{ family: 'Synthetic' }] },
  ]);
  return created;
}

function token(name: string, access: Partial<TokenAccess> & { scopes: string[] }): string {
  tokens.set(name, { clientId: 'test-client', backend: !access.patient, ...access });
  return name;
}

async function call(
  method: string,
  url: string,
  bearer?: string,
  body?: unknown,
  extra: Partial<SandboxRequest> = {},
) {
  const response = await sandbox.handle({
    method,
    url,
    body,
    headers: bearer ? { authorization: `Bearer ${bearer}` } : {},
    ...extra,
  });
  return { ...response, outcome: response.body as OperationOutcome };
}

const diagnostics = (response: { outcome: OperationOutcome }) =>
  response.outcome.issue?.[0]?.diagnostics ?? '';

afterEach(async () => {
  await sandbox?.close();
  tokens.clear();
});

describe('callers without a token', () => {
  it('act as the administrator from loopback or in process, and are refused from elsewhere', async () => {
    sandbox = await sandboxWith();
    expect((await call('GET', 'Patient/pb')).status).toBe(200);
    expect(
      (await call('GET', 'Patient/pb', undefined, undefined, { remoteAddress: '127.0.0.1' })).status,
    ).toBe(200);
    expect(
      (await call('GET', 'Patient/pb', undefined, undefined, { remoteAddress: '::ffff:127.0.0.1' })).status,
    ).toBe(200);
    const outside = await call('GET', 'Patient/pb', undefined, undefined, { remoteAddress: '192.0.2.10' });
    expect(outside.status).toBe(401);
    expect(outside.headers['www-authenticate']).toMatch(/^Bearer/);
  });

  it('are refused everywhere when tokens are required, except for metadata and discovery', async () => {
    sandbox = await sandboxWith({ required: true });
    const refused = await call('GET', 'Patient/pa');
    expect(refused.status).toBe(401);
    expect(refused.outcome.resourceType).toBe('OperationOutcome');
    expect((await call('GET', 'metadata')).status).toBe(200);
    expect((await call('GET', '.well-known/smart-configuration')).status).toBe(200);
  });

  it('an unknown token or another scheme is 401, never the administrator', async () => {
    sandbox = await sandboxWith();
    const unknown = await call('GET', 'Patient/pa', 'no-such-token');
    expect(unknown.status).toBe(401);
    expect(unknown.headers['www-authenticate']).toContain('error="invalid_token"');
    const basic = await sandbox.handle({
      method: 'GET',
      url: 'Patient/pa',
      headers: { authorization: 'Basic eDp5' },
    });
    expect(basic.status).toBe(401);
  });
});

describe('resource type and interaction', () => {
  it('allows what the scopes cover and names the missing scope in a 403 OperationOutcome', async () => {
    sandbox = await sandboxWith();
    const bearer = token('system-read', { scopes: ['system/Patient.rs', 'system/Observation.r'] });
    expect((await call('GET', 'Patient/pa', bearer)).status).toBe(200);
    expect((await call('GET', 'Patient?_count=5', bearer)).status).toBe(200);
    expect((await call('GET', 'Patient/pa/_history', bearer)).status).toBe(200);
    expect((await call('GET', 'Observation/obs-a', bearer)).status).toBe(200);

    const cases: [string, string, unknown, string][] = [
      ['POST', 'Patient', { resourceType: 'Patient' }, 'system/Patient.c'],
      ['PUT', 'Patient/pa', { resourceType: 'Patient', id: 'pa' }, 'system/Patient.u'],
      // An update that creates is a create.
      ['PUT', 'Patient/new-one', { resourceType: 'Patient', id: 'new-one' }, 'system/Patient.c'],
      ['PATCH', 'Patient/pa', [{ op: 'add', path: '/active', value: true }], 'system/Patient.u'],
      ['DELETE', 'Patient/pa', undefined, 'system/Patient.d'],
      ['GET', 'Observation?subject=Patient/pa', undefined, 'system/Observation.s'],
      ['GET', 'Practitioner/dr', undefined, 'system/Practitioner.r'],
    ];
    for (const [method, url, body, missing] of cases) {
      const refused = await call(method, url, bearer, body);
      expect(refused.status, `${method} ${url}`).toBe(403);
      expect(refused.outcome.issue[0].code).toBe('forbidden');
      expect(diagnostics(refused), `${method} ${url}`).toContain(missing);
      expect(refused.headers['www-authenticate']).toContain(`scope="${missing}"`);
    }
    // Nothing was written by the refused requests.
    expect((await call('GET', 'Patient/new-one')).status).toBe(404);
  });

  it('reads v1 scopes (read, write) and wildcards, and lets no query-restricted scope stand for the whole type', async () => {
    sandbox = await sandboxWith();
    const v1 = token('v1', { scopes: ['system/Patient.read', 'system/*.s'] });
    expect((await call('GET', 'Patient/pa', v1)).status).toBe(200);
    expect((await call('GET', 'Observation?subject=Patient/pa', v1)).status).toBe(200);
    expect((await call('POST', 'Patient', v1, { resourceType: 'Patient' })).status).toBe(403);
    const restricted = token('restricted', { scopes: ['system/Observation.rs?category=laboratory'] });
    expect((await call('GET', 'Observation/obs-a', restricted)).status).toBe(403);
  });

  it('checks every entry of a batch or transaction on its own', async () => {
    sandbox = await sandboxWith();
    const bearer = token('batch', { scopes: ['system/Patient.rs', 'system/Observation.rs'] });
    const batch = (type: 'batch' | 'transaction', entries: Bundle['entry']): Bundle => ({
      resourceType: 'Bundle',
      type,
      entry: entries,
    });
    const allowed = await call(
      'POST',
      '',
      bearer,
      batch('batch', [
        { request: { method: 'GET', url: 'Patient/pa' } },
        { request: { method: 'GET', url: 'Observation?subject=Patient/pa' } },
      ]),
    );
    expect(allowed.status).toBe(200);

    for (const type of ['batch', 'transaction'] as const) {
      const refused = await call(
        'POST',
        '',
        bearer,
        batch(type, [
          { request: { method: 'GET', url: 'Patient/pa' } },
          {
            fullUrl: 'urn:uuid:0d9f5a4e-6f55-4a40-9a3f-3f1f4c1f9b11',
            resource: {
              resourceType: 'DocumentReference',
              status: 'current',
              content: [],
            } as DocumentReference,
            request: { method: 'POST', url: 'DocumentReference' },
          },
        ]),
      );
      expect(refused.status, type).toBe(403);
      expect(diagnostics(refused)).toMatch(
        /^entry 1 \(POST DocumentReference\): .*system\/DocumentReference\.c/,
      );
    }
    const elsewhere = await call(
      'POST',
      '',
      bearer,
      batch('batch', [{ request: { method: 'GET', url: 'https://other.example/fhir/Patient/pa' } }]),
    );
    expect(elsewhere.status).toBe(403);
  });
});

describe('patient/ scopes', () => {
  it('confine searches, reads and writes to the launch patient’s compartment', async () => {
    sandbox = await sandboxWith();
    const bearer = token('patient-a', {
      patient: 'pa',
      scopes: ['patient/Patient.rs', 'patient/Observation.crs', 'patient/Practitioner.r'],
    });
    const search = await call('GET', 'Observation', bearer);
    expect(search.status).toBe(200);
    expect(((search.body as Bundle).entry ?? []).map((entry) => entry.resource?.id)).toEqual(['obs-a']);
    const otherPatientsSearch = await call('GET', 'Observation?subject=Patient/pb', bearer);
    expect((otherPatientsSearch.body as Bundle).entry ?? []).toEqual([]);
    const patients = await call('GET', 'Patient', bearer);
    expect(((patients.body as Bundle).entry ?? []).map((entry) => entry.resource?.id)).toEqual(['pa']);

    expect((await call('GET', 'Observation/obs-a', bearer)).status).toBe(200);
    const otherObservation = await call('GET', 'Observation/obs-b', bearer);
    expect(otherObservation.status).toBe(403);
    expect(diagnostics(otherObservation)).toContain('compartment of Patient/pa');
    expect((await call('GET', 'Patient/pb', bearer)).status).toBe(403);
    // Shared resources (not patient data) stay reachable.
    expect((await call('GET', 'Practitioner/dr', bearer)).status).toBe(200);

    const forOther = await call('POST', 'Observation', bearer, { ...observation('x', 'pb'), id: undefined });
    expect(forOther.status).toBe(403);
    const forOwn = await call('POST', 'Observation', bearer, { ...observation('x', 'pa'), id: undefined });
    expect(forOwn.status).toBe(201);
    // Type-wide history cannot be confined to one patient.
    expect((await call('GET', 'Observation/_history', bearer)).status).toBe(403);
  });

  it('confine searches inside a batch too', async () => {
    sandbox = await sandboxWith();
    const bearer = token('patient-a-batch', { patient: 'pa', scopes: ['patient/Observation.rs'] });
    const response = await call('POST', '', bearer, {
      resourceType: 'Bundle',
      type: 'batch',
      entry: [{ request: { method: 'GET', url: 'Observation?status=final' } }],
    });
    expect(response.status).toBe(200);
    const inner = (response.body as Bundle).entry?.[0]?.resource as Bundle;
    expect((inner.entry ?? []).map((entry) => entry.resource?.id)).toEqual(['obs-a']);
  });

  it('accept a Provenance about the patient’s own document, not about another patient’s', async () => {
    sandbox = await sandboxWith();
    const bearer = token('patient-a-provenance', { patient: 'pa', scopes: ['patient/Provenance.c'] });
    const provenance = (target: string): Provenance => ({
      resourceType: 'Provenance',
      target: [{ reference: target }],
      recorded: '2026-01-01T00:00:00Z',
      agent: [{ who: { reference: 'Practitioner/dr' } }],
    });
    expect((await call('POST', 'Provenance', bearer, provenance('DocumentReference/doc-a'))).status).toBe(
      201,
    );
    expect((await call('POST', 'Provenance', bearer, provenance('DocumentReference/doc-b'))).status).toBe(
      403,
    );
  });

  it('see a transaction’s urn:uuid references as the entries they name, as the server resolves them', async () => {
    sandbox = await sandboxWith();
    const bearer = token('patient-a-transaction', {
      patient: 'pa',
      scopes: ['patient/DocumentReference.c', 'patient/Provenance.c'],
    });
    const noteAndProvenance = (patientId: string): Bundle => ({
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        {
          fullUrl: 'urn:uuid:6b7c2a8e-1d4f-4c3b-9a1e-2f5d8c7b6a01',
          resource: { ...documentReference('ignored', patientId), id: undefined },
          request: { method: 'POST', url: 'DocumentReference' },
        },
        {
          resource: {
            resourceType: 'Provenance',
            target: [{ reference: 'urn:uuid:6b7c2a8e-1d4f-4c3b-9a1e-2f5d8c7b6a01' }],
            recorded: '2026-01-01T00:00:00Z',
            agent: [{ who: { reference: 'Practitioner/dr' } }],
          } as Provenance,
          request: { method: 'POST', url: 'Provenance' },
        },
      ],
    });
    expect((await call('POST', '', bearer, noteAndProvenance('pa'))).status).toBe(200);
    const other = await call('POST', '', bearer, noteAndProvenance('pb'));
    expect(other.status).toBe(403);
    expect(diagnostics(other)).toMatch(/^entry 0 .*compartment of Patient\/pa/);
  });

  it('without a patient in context reach nothing; user/ scopes reach every patient', async () => {
    sandbox = await sandboxWith();
    const noPatient = token('no-patient', { backend: false, scopes: ['patient/Patient.r'] });
    expect((await call('GET', 'Patient/pa', noPatient)).status).toBe(403);
    const user = token('user', { backend: false, scopes: ['user/Patient.r'] });
    expect((await call('GET', 'Patient/pb', user)).status).toBe(200);
    const missing = await call('GET', 'Observation/obs-a', user);
    expect(diagnostics(missing)).toContain('user/Observation.r');
  });
});

describe('servers that honour only the first scope per resource type', () => {
  const scopes = ['system/DocumentReference.rs', 'system/DocumentReference.cu'];
  const draft = { ...documentReference('ignored', 'pa'), id: undefined };

  it('refuse what a later scope of the same type grants, and say why', async () => {
    sandbox = await sandboxWith({ onlyFirstScopePerType: true });
    const bearer = token('split-scopes', { scopes });
    expect((await call('GET', 'DocumentReference/doc-a', bearer)).status).toBe(200);
    const refused = await call('POST', 'DocumentReference', bearer, draft);
    expect(refused.status).toBe(403);
    expect(diagnostics(refused)).toContain('system/DocumentReference.c');
    expect(diagnostics(refused)).toContain('only the first scope per resource type');
    // One scope per type with every permission works there too.
    const combined = token('combined', { scopes: ['system/DocumentReference.crus'] });
    expect((await call('POST', 'DocumentReference', combined, draft)).status).toBe(201);
  });

  it('while by default every granted scope counts', async () => {
    sandbox = await sandboxWith();
    const bearer = token('split-default', { scopes });
    expect((await call('POST', 'DocumentReference', bearer, draft)).status).toBe(201);
  });
});

describe('servers that look up declared profiles (Medplum)', () => {
  const profiled = (target: string): Provenance => ({
    resourceType: 'Provenance',
    meta: { profile: ['http://hl7.org/fhir/uv/aitransparency/StructureDefinition/AI-Provenance'] },
    target: [{ reference: target }],
    recorded: '2026-01-01T00:00:00Z',
    agent: [{ who: { reference: 'Practitioner/dr' } }],
  });
  const unprofiled = (target: string): Provenance => {
    const { meta: _meta, ...rest } = profiled(target);
    return rest;
  };

  it('refuse a write declaring meta.profile without StructureDefinition.rs, by default, naming the scope', async () => {
    sandbox = await sandboxWith();
    const bearer = token('no-profiles', { scopes: ['system/Provenance.cs'] });
    const refused = await call('POST', 'Provenance', bearer, profiled('DocumentReference/doc-a'));
    expect(refused.status).toBe(403);
    expect(diagnostics(refused)).toContain('needs system/StructureDefinition.rs');
    expect(diagnostics(refused)).toContain('meta.profile');
    expect(refused.headers['www-authenticate']).toContain('scope="system/StructureDefinition.rs"');
    // The same resource without the declaration goes through.
    expect((await call('POST', 'Provenance', bearer, unprofiled('DocumentReference/doc-a'))).status).toBe(
      201,
    );
    // Inside a transaction the entry is named and nothing is written.
    const before = (await call('GET', 'Provenance')).body as Bundle;
    const transaction = await call('POST', '', bearer, {
      resourceType: 'Bundle',
      type: 'transaction',
      entry: [
        { resource: unprofiled('DocumentReference/doc-a'), request: { method: 'POST', url: 'Provenance' } },
        { resource: profiled('DocumentReference/doc-a'), request: { method: 'POST', url: 'Provenance' } },
      ],
    });
    expect(transaction.status).toBe(403);
    expect(diagnostics(transaction)).toMatch(
      /^entry 1 \(POST Provenance\): .*system\/StructureDefinition\.rs/,
    );
    const after = (await call('GET', 'Provenance')).body as Bundle;
    expect(after.entry?.length).toBe(before.entry?.length);

    const allowed = token('with-profiles', {
      scopes: ['system/Provenance.cs', 'system/StructureDefinition.rs'],
    });
    expect((await call('POST', 'Provenance', allowed, profiled('DocumentReference/doc-a'))).status).toBe(201);
    // Read alone is not the lookup: Medplum searches StructureDefinition by url.
    const readOnly = token('read-only-profiles', {
      scopes: ['system/Provenance.cs', 'system/StructureDefinition.r'],
    });
    expect((await call('POST', 'Provenance', readOnly, profiled('DocumentReference/doc-a'))).status).toBe(
      403,
    );
  });

  it('name user/StructureDefinition.rs for a clinician’s token, and take it', async () => {
    sandbox = await sandboxWith();
    const clinician = token('clinician', { patient: 'pa', scopes: ['patient/Provenance.c'] });
    const refused = await call('POST', 'Provenance', clinician, profiled('DocumentReference/doc-a'));
    expect(refused.status).toBe(403);
    expect(diagnostics(refused)).toContain('needs user/StructureDefinition.rs');
    const granted = token('clinician-profiles', {
      patient: 'pa',
      scopes: ['patient/Provenance.c', 'user/StructureDefinition.rs'],
    });
    expect((await call('POST', 'Provenance', granted, profiled('DocumentReference/doc-a'))).status).toBe(201);
    // The profile lookup does not widen the patient's compartment.
    expect((await call('POST', 'Provenance', granted, profiled('DocumentReference/doc-b'))).status).toBe(403);
  });

  it('the default scopes write profiled resources, even where only the first scope per type counts', async () => {
    const { defaultBackendScopes, defaultLaunchScopes } = await import('../../src/config/auth-config.ts');
    sandbox = await sandboxWith({ onlyFirstScopePerType: true });
    const service = token('service-defaults', { scopes: defaultBackendScopes.split(' ') });
    expect((await call('POST', 'Provenance', service, profiled('DocumentReference/doc-a'))).status).toBe(201);
    const clinician = token('launch-defaults', { patient: 'pa', scopes: defaultLaunchScopes.split(' ') });
    expect((await call('POST', 'Provenance', clinician, profiled('DocumentReference/doc-a'))).status).toBe(
      201,
    );
  });

  it('is off with sandbox.auth.medplumProfileCheck false', async () => {
    const { loadConfig } = await import('../../src/config/load-config.ts');
    expect(loadConfig({ env: {} }).sandbox.auth.medplumProfileCheck).toBe(true);
    expect(
      loadConfig({ env: { EHR_AGENT_SANDBOX__AUTH__MEDPLUM_PROFILE_CHECK: 'false' } }).sandbox.auth
        .medplumProfileCheck,
    ).toBe(false);
    sandbox = await sandboxWith({ medplumProfileCheck: false });
    const bearer = token('unchecked', { scopes: ['system/Provenance.cs'] });
    expect((await call('POST', 'Provenance', bearer, profiled('DocumentReference/doc-a'))).status).toBe(201);
  });
});

describe('the patient compartment', () => {
  it('is FHIR’s: a Patient is in its own, an Encounter by subject, a shared type in none', async () => {
    const { belongsToPatient, compartmentSearchParameter } = await import(
      '../../src/sandbox/authorization/patient-compartment.ts'
    );
    sandbox = await sandboxWith();
    const read = async () => undefined;
    expect(await belongsToPatient({ resourceType: 'Patient', id: 'pa' } as Patient, 'pa', read)).toBe(true);
    expect(await belongsToPatient({ resourceType: 'Patient', id: 'pb' } as Patient, 'pa', read)).toBe(false);
    expect(
      await belongsToPatient(
        {
          resourceType: 'Encounter',
          status: 'finished',
          class: {},
          subject: { reference: `${base}/Patient/pa` },
        } as Encounter,
        'pa',
        read,
      ),
    ).toBe(true);
    expect(compartmentSearchParameter('Encounter')).toBe('subject');
    expect(compartmentSearchParameter('Condition')).toBe('patient');
    expect(compartmentSearchParameter('Practitioner')).toBeUndefined();
  });
});
