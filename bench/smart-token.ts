import { mkdtemp, rm } from 'node:fs/promises';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { createAccessTokenProvider } from '../fhir/smart-backend-auth.ts';
import { backendAuthConfigSchema } from '../src/config/auth-config.ts';

/**
 * What SMART Backend Services costs the FHIR traffic: a cached getToken() against the static-token baseline
 * (what every FHIR request pays), a cold token (sign the assertion + one POST) for ES384 and RS384, and how many
 * token requests 50 concurrent callers cause. The token endpoint is a local stub that accepts any assertion:
 * the figures are the client's own work plus one loopback round trip.
 */
export async function run(): Promise<Record<string, unknown>> {
  let tokenRequests = 0;
  const server = createServer((request, response) => {
    request.resume();
    request.on('end', () => {
      tokenRequests += 1;
      response.writeHead(200, { 'content-type': 'application/json' });
      response.end(
        JSON.stringify({ access_token: `t${tokenRequests}`, token_type: 'bearer', expires_in: 300 }),
      );
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const tokenUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/token`;
  const dataDir = await mkdtemp(path.join(tmpdir(), 'bench-smart-'));
  const options = { fhirBaseUrl: 'http://127.0.0.1/fhir', dataDir };
  try {
    const calls = 100_000;
    const timeCalls = async (getToken: () => Promise<string | undefined>) => {
      const startedAt = performance.now();
      for (let call = 0; call < calls; call += 1) await getToken();
      return ((performance.now() - startedAt) * 1000) / calls;
    };
    const baseline = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'static', token: 'x' }),
      options,
    );
    const smart = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'bench', tokenUrl }),
      options,
    );
    await smart.getToken();
    const baselineMicroseconds = await timeCalls(() => baseline.getToken());
    const cachedMicroseconds = await timeCalls(() => smart.getToken());

    const coldMilliseconds: Record<string, number> = {};
    for (const alg of ['ES384', 'RS384'] as const) {
      const provider = await createAccessTokenProvider(
        backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'bench', tokenUrl, alg }),
        options,
      );
      await provider.getToken();
      const rounds = 50;
      const startedAt = performance.now();
      for (let round = 0; round < rounds; round += 1) {
        provider.invalidate();
        await provider.getToken();
      }
      coldMilliseconds[alg] = Number(((performance.now() - startedAt) / rounds).toFixed(2));
    }

    const concurrent = await createAccessTokenProvider(
      backendAuthConfigSchema.parse({ mode: 'smart-backend', clientId: 'bench', tokenUrl }),
      options,
    );
    const before = tokenRequests;
    await Promise.all(Array.from({ length: 50 }, () => concurrent.getToken()));
    return {
      cachedGetTokenMicroseconds: Number(cachedMicroseconds.toFixed(3)),
      staticBaselineGetTokenMicroseconds: Number(baselineMicroseconds.toFixed(3)),
      cachedVersusBaseline: Number((cachedMicroseconds / baselineMicroseconds).toFixed(2)),
      coldTokenMilliseconds: coldMilliseconds,
      tokenRequestsFor50ConcurrentCallers: tokenRequests - before,
    };
  } finally {
    server.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}
