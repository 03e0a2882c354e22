import { execFileSync } from 'node:child_process';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { RunningService } from '../../src/service.ts';
import { startSandboxService } from '../integration/service-harness.ts';
import { copyOfStarterRules } from './helpers.ts';

/** The serving rule set as operators confirm it: GET /api/rules behind the admin secret, and /metrics. */
let service: RunningService;
const source = copyOfStarterRules();

beforeAll(async () => {
  ({ service } = await startSandboxService({
    EHR_AGENT_RULES__DIRECTORY: source.directory,
    EHR_AGENT_RULES__VALUE_SET_FILE: source.valueSetFile ?? '',
  }));
});
afterAll(async () => service?.close());

type Served = {
  fingerprint: string;
  loadedAt: string;
  rules: { id: string; version: string; title: string; enabled: boolean; mode: string }[];
};

async function served(): Promise<Served> {
  const response = await fetch(`${service.url}/api/rules`, {
    headers: { authorization: `Bearer ${service.adminSecret}` },
  });
  expect(response.status).toBe(200);
  return (await response.json()) as Served;
}

describe('GET /api/rules and the rule-set metrics', () => {
  it('needs the admin secret: none, a wrong one and the notify secret are refused with an OperationOutcome', async () => {
    const attempts: Record<string, string>[] = [
      {},
      { authorization: 'Bearer wrong' },
      { authorization: `Bearer ${service.notifySecret}` },
    ];
    for (const headers of attempts) {
      const response = await fetch(`${service.url}/api/rules`, { headers });
      expect(response.status).toBe(401);
      expect(((await response.json()) as { resourceType: string }).resourceType).toBe('OperationOutcome');
    }
  });

  it('shows the serving set, and the new one after an edit made with sed -i (also in /metrics)', async () => {
    const before = await served();
    expect(before.fingerprint).toMatch(/^[0-9a-f]{16}$/);
    expect(Number.isNaN(Date.parse(before.loadedAt))).toBe(false);
    expect(before.rules).toHaveLength(10);
    expect(before.rules.find((rule) => rule.id === 'diabetes-statin')).toEqual({
      id: 'diabetes-statin',
      version: '1.0.0',
      title: expect.stringContaining('statin'),
      enabled: true,
      mode: 'active',
    });
    const metricsBefore = await (
      await fetch(`${service.url}/metrics`, { headers: { authorization: `Bearer ${service.adminSecret}` } })
    ).text();
    expect(metricsBefore).toContain(`ehr_agent_rule_set_info{fingerprint="${before.fingerprint}"} 1`);
    expect(metricsBefore).toMatch(
      /ehr_agent_rule_info\{rule_id="diabetes-statin",version="1\.0\.0",enabled="true",mode="active"\} 1/,
    );

    execFileSync('sed', [
      '-i',
      's/^version: 1.0.0/version: 1.1.0/',
      path.join(source.directory, 'diabetes-statin.yaml'),
    ]);
    const deadline = Date.now() + 10_000;
    let after = await served();
    while (after.fingerprint === before.fingerprint && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      after = await served();
    }
    expect(after.fingerprint).not.toBe(before.fingerprint);
    expect(after.rules.find((rule) => rule.id === 'diabetes-statin')?.version).toBe('1.1.0');
    const metricsAfter = await (
      await fetch(`${service.url}/metrics`, { headers: { authorization: `Bearer ${service.adminSecret}` } })
    ).text();
    expect(metricsAfter).toContain(`ehr_agent_rule_set_info{fingerprint="${after.fingerprint}"} 1`);
    expect(metricsAfter).not.toContain(`fingerprint="${before.fingerprint}"`);
    expect(metricsAfter).toMatch(/ehr_agent_rule_info\{rule_id="diabetes-statin",version="1\.1\.0"/);
    expect(metricsAfter).toMatch(/ehr_agent_rule_set_reloads_total\{outcome="loaded"\} 2/);
  });
});
