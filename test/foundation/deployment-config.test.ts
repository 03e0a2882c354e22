import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse, stringify } from 'yaml';
import { loadConfig } from '../../src/config/load-config.ts';
import { suitesMayRun } from '../support/prerequisites.ts';
import { repoRoot } from '../support/shared-fixtures.ts';

const composeFile = path.join(repoRoot, 'docker-compose.yml');
const secrets = {
  NOTIFY_SECRET: 'a-notify-secret-of-some-length',
  ADMIN_SECRET: 'an-admin-secret-of-some-length',
};

interface ComposeService {
  environment?: Record<string, string>;
  deploy?: { replicas?: number };
  ports?: string[];
  expose?: string[];
  volumes?: string[];
  depends_on?: Record<string, unknown>;
}

function readCompose(): { services: Record<string, ComposeService> } {
  return parse(readFileSync(composeFile, 'utf8'));
}

/** Compose substitutes ${VAR:-default} and ${VAR:?message}; the required secrets get stand-in values. */
function substituted(environment: Record<string, string>): Record<string, string> {
  return Object.fromEntries(
    Object.entries(environment).map(([name, value]) => [
      name,
      String(value).replace(
        /\$\{([A-Z_]+)(?::-([^}]*)|:\?[^}]*)?\}/g,
        (_match, variable: string, fallback?: string) =>
          secrets[variable as keyof typeof secrets] ?? fallback ?? '',
      ),
    ]),
  );
}

/** The deployment in docker-compose.yml configures the service through its environment: every name must be one it knows. */
describe('docker-compose deployment', () => {
  it('gives the service an environment its configuration accepts, pointing at HAPI, PostgreSQL and llama.cpp', () => {
    const compose = readCompose();
    const config = loadConfig({ env: substituted(compose.services.agent.environment ?? {}), cwd: repoRoot });
    expect(config.fhir.baseUrl).toBe('http://hapi:8080/fhir');
    expect(config.queue).toMatchObject({
      adapter: 'postgres',
      postgresUrl: 'postgres://agent:change-me@agent-db:5432/agent',
    });
    expect(config.storage.adapter).toBe('postgres');
    expect(config.model).toMatchObject({ provider: 'remote', remote: { endpointUrl: 'http://llama:8081' } });
    expect(config.intake.subscription.mode).toBe('classic');
    expect(config.host).toBe('0.0.0.0');
    // The operator APIs get their own secret, never the notify secret the FHIR server holds.
    expect(config.admin.secret).toBe(secrets.ADMIN_SECRET);
  });

  it('runs two agent replicas on one PostgreSQL queue behind a gateway on port 3000', () => {
    const { services } = readCompose();
    const agent = services.agent;
    expect(agent.deploy?.replicas).toBe(2);
    // Replicas cannot share a host port; only the gateway publishes one.
    expect(agent.ports).toBeUndefined();
    expect(agent.expose).toEqual(['3000']);
    expect(Object.keys(agent.depends_on ?? {})).toContain('agent-db');
    expect(services.gateway.ports).toEqual(['3000:3000']);
    // The FHIR server's notifications and browsers go through the gateway, so either replica may answer.
    expect(substituted(agent.environment ?? {}).PUBLIC_URL).toBe('http://gateway:3000');
    const mount = services.gateway.volumes?.find((volume) => volume.endsWith(':ro')) ?? '';
    const gatewayConfig = readFileSync(path.join(repoRoot, mount.split(':')[0]), 'utf8');
    expect(mount.split(':')[1]).toBe('/etc/nginx/conf.d/default.conf');
    expect(gatewayConfig).toMatch(/server agent:3000\b/);
    expect(gatewayConfig).toMatch(/listen 3000;/);
    expect(gatewayConfig).toMatch(/proxy_pass http:\/\/agent_replicas;/);
    expect(gatewayConfig).toMatch(/upstream agent_replicas \{/);
  });
});

const composeBinary = spawnSync('docker-compose', ['version'], { stdio: 'ignore' }).status === 0;
const composeMayRun = suitesMayRun('docker-compose (apt-get install docker-compose)', composeBinary, {
  skipped: 'docker-compose.yml is not validated by docker-compose itself',
});

describe.runIf(composeMayRun)('docker-compose config', () => {
  const config = (file: string, environment: Record<string, string>) =>
    spawnSync('docker-compose', ['-f', file, 'config', '-q'], {
      cwd: repoRoot,
      env: { PATH: process.env.PATH, ...environment },
      encoding: 'utf8',
    });

  it('accepts docker-compose.yml with the secrets set, and refuses it without NOTIFY_SECRET or ADMIN_SECRET', () => {
    expect(config(composeFile, secrets).status).toBe(0);
    const withoutNotify = config(composeFile, { ADMIN_SECRET: secrets.ADMIN_SECRET });
    expect(withoutNotify.status).not.toBe(0);
    expect(withoutNotify.stderr).toMatch(/set NOTIFY_SECRET/);
    const withoutAdmin = config(composeFile, { NOTIFY_SECRET: secrets.NOTIFY_SECRET });
    expect(withoutAdmin.status).not.toBe(0);
    expect(withoutAdmin.stderr).toMatch(/set ADMIN_SECRET/);
  });

  it('refuses a broken copy of it', () => {
    const directory = mkdtempSync(path.join(tmpdir(), 'compose-'));
    try {
      const compose = readCompose() as { services: Record<string, Record<string, unknown>> };
      compose.services.agent.deploy = { replicas: 'two' };
      const broken = path.join(directory, 'docker-compose.yml');
      writeFileSync(broken, stringify(compose));
      const result = config(broken, secrets);
      expect(result.status).not.toBe(0);
      expect(result.stderr).toMatch(/replicas/);
    } finally {
      rmSync(directory, { recursive: true, force: true });
    }
  });

  it('resolves two replicas of the agent', () => {
    const resolved = parse(
      execFileSync('docker-compose', ['-f', composeFile, 'config'], {
        cwd: repoRoot,
        env: { PATH: process.env.PATH, ...secrets },
        encoding: 'utf8',
      }),
    ) as { services: Record<string, ComposeService> };
    expect(resolved.services.agent.deploy?.replicas).toBe(2);
    expect(resolved.services.agent.environment?.DATABASE_URL).toBe(
      'postgres://agent:change-me@agent-db:5432/agent',
    );
  });
});
