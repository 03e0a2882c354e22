import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { parse } from 'yaml';
import { loadConfig } from '../../src/config/load-config.ts';
import { repoRoot } from '../support/shared-fixtures.ts';

/** The deployment in docker-compose.yml configures the service through its environment: every name must be one it knows. */
describe('docker-compose deployment', () => {
  it('gives the service an environment its configuration accepts, pointing at HAPI, PostgreSQL and llama.cpp', () => {
    const compose = parse(readFileSync(path.join(repoRoot, 'docker-compose.yml'), 'utf8'));
    const environment: Record<string, string> = {};
    for (const [name, value] of Object.entries(
      compose.services.agent.environment as Record<string, string>,
    )) {
      // Compose substitutes ${VAR:-default} and ${VAR:?message}; stand in values for the required ones.
      environment[name] = String(value).replace(
        /\$\{([A-Z_]+)(?::-([^}]*)|:\?[^}]*)?\}/g,
        (_match, variable, fallback) =>
          variable === 'NOTIFY_SECRET' ? 'a-notify-secret-of-some-length' : (fallback ?? ''),
      );
    }
    const config = loadConfig({ env: environment, cwd: repoRoot });
    expect(config.fhir.baseUrl).toBe('http://hapi:8080/fhir');
    expect(config.queue).toMatchObject({
      adapter: 'postgres',
      postgresUrl: 'postgres://agent:change-me@agent-db:5432/agent',
    });
    expect(config.model).toMatchObject({ provider: 'remote', remote: { endpointUrl: 'http://llama:8081' } });
    expect(config.intake.subscription.mode).toBe('classic');
    expect(config.host).toBe('0.0.0.0');
  });
});
