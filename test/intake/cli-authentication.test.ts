import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createAccessTokenProvider } from '../../fhir/smart-backend-auth.ts';
import { createSubscriptionProgram } from '../../src/cli/subscription.ts';
import { backendAuthConfigSchema, defaultBackendScopes } from '../../src/config/auth-config.ts';
import { type AuthorizedSandbox, startAuthorizedSandbox } from '../sandbox/authorized-sandbox.ts';
import { testConfig } from '../support/intake-harness.ts';

/**
 * Operator CLIs use the service's configuration and its authenticated client: against a server that wants a
 * SMART Backend Services token on every request (the sandbox with `auth.required`), `subscription list`
 * answered "Unauthorized".
 */
let running: AuthorizedSandbox;
let dataDir: string;

beforeAll(async () => {
  running = await startAuthorizedSandbox({ auth: { required: true } });
  running.sandbox.allowSubscriptionEndpoint('http://127.0.0.1:3999/notify');
  dataDir = await mkdtemp(path.join(tmpdir(), 'cli-auth-'));
  // The service's key, generated into its data directory as at its first start, registered with the server.
  const provider = await createAccessTokenProvider(
    backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'ehr-draft-agent' }),
    { fhirBaseUrl: running.fhirBaseUrl, dataDir },
  );
  running.authorization.registerClient({
    clientId: 'ehr-draft-agent',
    jwks: provider.jwks as { keys: Record<string, unknown>[] },
    scopes: defaultBackendScopes.split(' '),
  });
}, 120_000);

afterAll(async () => {
  await running?.close();
  if (dataDir) await rm(dataDir, { recursive: true, force: true });
});

describe('subscription command under smart-backend', () => {
  it('reads and writes the server with the service token', async () => {
    const config = testConfig(running.fhirBaseUrl, dataDir, {
      publicUrl: 'http://127.0.0.1:3999',
      auth: { backend: { mode: 'smart-backend', clientId: 'ehr-draft-agent' } },
      intake: { subscription: { mode: 'classic' } },
    });
    const output = { out: '', err: '' };
    const io = { out: (text: string) => (output.out += text), err: (text: string) => (output.err += text) };
    await createSubscriptionProgram({ io, config: () => config }).parseAsync(['ensure'], { from: 'user' });
    await createSubscriptionProgram({ io, config: () => config }).parseAsync(['list'], { from: 'user' });
    expect(output.err).toBe('');
    expect(output.out).toMatch(/^created\t/);
    expect(output.out).toContain('http://127.0.0.1:3999/notify');
    // The same read without the service's token is refused: the commands above carried one.
    expect((await fetch(`${running.fhirBaseUrl}/Subscription`)).status).toBe(401);
  });
});
