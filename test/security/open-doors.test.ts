import { mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { loadConfig } from '../../src/config/load-config.ts';
import { silentLogger } from '../../src/log.ts';
import { type RunningService, startService } from '../../src/service.ts';
import { finishedEncounter, startSandboxService } from '../integration/service-harness.ts';
import type { StandInResource } from '../support/fhir-stand-in.ts';
import { type IntakeHarness, notifySecret, startIntakeHarness } from '../support/intake-harness.ts';

/**
 * Outside the sandbox nothing is open: no notify secret, no start; the operator APIs need the admin
 * secret; CDS Hooks need their clients' JWTs unless a site opts out in so many words; an encounter-start
 * hook cannot aim a draft at another patient's encounter. Each case was reproduced against a real EHR.
 */
const hookBody = (hook: string, context: Record<string, string>) => ({
  hook,
  hookInstance: `instance-${hook}`,
  context: { userId: 'Practitioner/p1', ...context },
});

function post(url: string, body: unknown, headers: Record<string, string> = {}): Promise<Response> {
  return fetch(url, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: JSON.stringify(body),
  });
}

describe('start-up against a real EHR', () => {
  it('refuses to start without a notify secret, naming the key and the variable to set', () => {
    const directory = mkdtempSync(path.join(tmpdir(), 'open-doors-'));
    try {
      expect(() =>
        loadConfig({ env: { FHIR_BASE_URL: 'https://ehr.example/fhir' }, cwd: directory }),
      ).toThrow(/"notify\.secret" is required when fhir\.baseUrl .*NOTIFY_SECRET/);
      // The sandbox alone may run without one: it generates its own.
      expect(loadConfig({ env: {}, cwd: directory }).notify.secret).toBeUndefined();
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });
});

describe('a service pointed at a real EHR, without CDS clients', () => {
  let harness: IntakeHarness;
  beforeAll(async () => {
    harness = await startIntakeHarness();
    harness.standIn.write({ resourceType: 'Patient', id: 'p1' });
    harness.standIn.write({ resourceType: 'Patient', id: 'p2' });
    harness.standIn.write({ ...finishedEncounter('p2', 'enc-of-p2'), status: 'planned' } as StandInResource);
  });
  afterAll(async () => harness?.close());

  it('lists jobs only for the admin secret, which defaults to the notify secret', async () => {
    const jobs = `${harness.service.url}/api/jobs?status=done`;
    expect((await fetch(jobs)).status).toBe(401);
    expect((await fetch(jobs, { headers: { authorization: 'Bearer wrong-secret-0123456789' } })).status).toBe(
      401,
    );
    expect((await fetch(jobs, { headers: { authorization: `Bearer ${notifySecret}` } })).status).toBe(200);
  });

  it('keeps operational detail for operators: /metrics needs the admin secret, /readyz tells others only its status', async () => {
    expect((await fetch(`${harness.service.url}/metrics`)).status).toBe(401);
    const anonymous = await fetch(`${harness.service.url}/readyz`);
    expect(anonymous.status).toBe(200);
    expect(await anonymous.json()).toEqual({ status: 'ready' });
    const admin = { headers: { authorization: `Bearer ${notifySecret}` } };
    expect((await fetch(`${harness.service.url}/metrics`, admin)).status).toBe(200);
    expect(await (await fetch(`${harness.service.url}/readyz`, admin)).json()).toHaveProperty('queue');
  });

  it('answers every hook call 401 and queues nothing, while discovery stays public', async () => {
    const base = `${harness.service.url}/cds-services`;
    expect((await fetch(base)).status).toBe(200);
    const calls = [
      post(
        `${base}/guideline-nudges-encounter-start`,
        hookBody('encounter-start', { patientId: 'p2', encounterId: 'enc-of-p2' }),
      ),
      post(`${base}/guideline-nudges-patient-view`, hookBody('patient-view', { patientId: 'p2' })),
      post(`${base}/guideline-nudges-patient-view/feedback`, {
        feedback: [{ card: 'c1', outcome: 'accepted', outcomeTimestamp: new Date().toISOString() }],
      }),
    ];
    for (const response of await Promise.all(calls)) {
      expect(response.status).toBe(401);
      expect((await response.json()).resourceType).toBe('OperationOutcome');
    }
    expect(await harness.service.queue.counts()).toMatchObject({ pending: 0, running: 0, done: 0 });
    expect(harness.standIn.requests.filter((request) => request.includes('enc-of-p2'))).toEqual([]);
  });
});

describe('explicit choices against a real EHR', () => {
  let harness: IntakeHarness;
  beforeAll(async () => {
    harness = await startIntakeHarness({
      admin: { secret: 'operator-admin-secret-0123456789' },
      rules: { cdsHooks: { allowUnauthenticated: true } },
    });
    harness.standIn.write({ resourceType: 'Patient', id: 'p1' });
    harness.standIn.write({ ...finishedEncounter('p2', 'enc-of-p2') } as StandInResource);
  });
  afterAll(async () => harness?.close());

  it('keeps the jobs API for the admin secret once one is set (the notify secret no longer opens it)', async () => {
    const jobs = `${harness.service.url}/api/jobs`;
    expect((await fetch(jobs, { headers: { authorization: `Bearer ${notifySecret}` } })).status).toBe(401);
    const admin = { authorization: 'Bearer operator-admin-secret-0123456789' };
    expect((await fetch(jobs, { headers: admin })).status).toBe(200);
  });

  it("answers hooks without a JWT when opted out, but never drafts onto another patient's encounter", async () => {
    const response = await post(
      `${harness.service.url}/cds-services/guideline-nudges-encounter-start`,
      hookBody('encounter-start', { patientId: 'p1', encounterId: 'enc-of-p2' }),
    );
    expect(response.status).toBe(400);
    expect((await response.json()).issue[0].diagnostics).toMatch(/not an encounter of context\.patientId/);
    expect(await harness.service.queue.counts()).toMatchObject({ pending: 0, running: 0, done: 0 });
  });
});

describe('the sandbox', () => {
  let service: RunningService;
  let dataDir: string;
  beforeAll(async () => {
    ({ service } = await startSandboxService());
    dataDir = path.dirname(service.adminSecretFile as string);
  });
  afterAll(async () => service?.close());

  it('generates an admin secret of its own into the data directory, private and kept across restarts', async () => {
    const file = service.adminSecretFile as string;
    expect(readFileSync(file, 'utf8').trim()).toBe(service.adminSecret);
    expect(statSync(file).mode & 0o777).toBe(0o600);
    expect(service.adminSecret).not.toBe(service.notifySecret);
    expect(service.adminSecret).not.toContain(service.notifySecret);
    const jobs = `${service.url}/api/jobs`;
    expect((await fetch(jobs, { headers: { authorization: `Bearer ${service.notifySecret}` } })).status).toBe(
      401,
    );
    expect((await fetch(jobs, { headers: { authorization: `Bearer ${service.adminSecret}` } })).status).toBe(
      200,
    );

    const again = await startService(
      loadConfig({ env: { PORT: '0', DATA_DIR: dataDir, EHR_AGENT_SANDBOX__PATIENTS: '1' }, cwd: dataDir }),
      silentLogger(),
    );
    try {
      expect(again.adminSecret).toBe(service.adminSecret);
    } finally {
      await again.close();
    }
  });

  it('refuses an encounter-start naming a finished encounter of another patient, and queues nothing', async () => {
    await service.sandbox!.seed([finishedEncounter('sbx-0000', 'finished-of-0000')]);
    const response = await post(
      `${service.url}/cds-services/guideline-nudges-encounter-start`,
      hookBody('encounter-start', { patientId: 'sbx-0001', encounterId: 'finished-of-0000' }),
    );
    expect(response.status).toBe(400);
    const queued = await Promise.all(
      (['pending', 'running', 'done', 'failed'] as const).map((status) => service.queue.list(status, 500)),
    );
    expect(queued.flat().filter((job) => job.encounterId === 'finished-of-0000')).toEqual([]);
  });
});
