import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConfigError, loadConfig } from '../../src/config/load-config.ts';

const emptyDirectory = () => mkdtempSync(path.join(tmpdir(), 'config-test-'));

describe('configuration', () => {
  it('has working defaults with no file and no environment', () => {
    const config = loadConfig({ env: {}, cwd: emptyDirectory() });
    expect(config.port).toBe(3000);
    expect(config.fhir.baseUrl).toBeUndefined();
    expect(config.queue.adapter).toBe('sqlite');
    expect(config.triggers.finished).toBe('progress-summary');
  });

  it('reads prefixed and well-known environment variables, environment over file', () => {
    const directory = emptyDirectory();
    writeFileSync(path.join(directory, 'service.yaml'), 'port: 4000\nqueue:\n  concurrency: 3\n');
    const config = loadConfig({
      env: {
        EHR_AGENT_CONFIG: 'service.yaml',
        PORT: '5000',
        EHR_AGENT_QUEUE__MAX_ATTEMPTS: '9',
        FHIR_BASE_URL: 'https://ehr.example/fhir',
        NOTIFY_SECRET: 'notify-secret-0123456789',
        ADMIN_SECRET: 'admin-secret-0123456789',
      },
      cwd: directory,
    });
    expect(config.port).toBe(5000);
    expect(config.queue.concurrency).toBe(3);
    expect(config.queue.maxAttempts).toBe(9);
    expect(config.fhir.baseUrl).toBe('https://ehr.example/fhir');
    expect(config.admin.secret).toBe('admin-secret-0123456789');
  });

  it('names the key, the file and the line of a bad value', () => {
    const directory = emptyDirectory();
    writeFileSync(path.join(directory, 'service.yaml'), 'port: 4000\nqueue:\n  adapter: kafka\n');
    expect(() => loadConfig({ env: { EHR_AGENT_CONFIG: 'service.yaml' }, cwd: directory })).toThrow(
      /service\.yaml:3: "queue\.adapter"/,
    );
  });

  it('refuses unknown keys and names the environment variable a bad value came from', () => {
    const directory = emptyDirectory();
    writeFileSync(path.join(directory, 'service.yaml'), 'port: 4000\nqueu:\n  adapter: sqlite\n');
    expect(() => loadConfig({ env: { EHR_AGENT_CONFIG: 'service.yaml' }, cwd: directory })).toThrow(
      /unknown key "queu"/,
    );
    expect(() => loadConfig({ env: { PORT: 'eighty' }, cwd: directory })).toThrow(
      /environment variable PORT: "port"/,
    );
  });

  it('reports YAML syntax errors with file and line', () => {
    const directory = emptyDirectory();
    writeFileSync(path.join(directory, 'service.yaml'), 'port: 4000\nqueue: [unclosed\n');
    expect(() => loadConfig({ env: { EHR_AGENT_CONFIG: 'service.yaml' }, cwd: directory })).toThrow(
      ConfigError,
    );
  });
});

describe('the shipped example configuration', () => {
  it('is valid and changes nothing from the defaults it shows', () => {
    const example = loadConfig({
      env: { EHR_AGENT_CONFIG: 'config/service.example.yaml' },
      cwd: process.cwd(),
    });
    const defaults = loadConfig({ env: {}, cwd: emptyDirectory() });
    expect(example).toEqual(defaults);
  });
});
