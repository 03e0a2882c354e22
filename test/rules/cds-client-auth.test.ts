import { randomUUID } from 'node:crypto';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { cdsClientAuthenticator } from '../../src/http/cds-client-auth.ts';

/** CDS Hooks 2.0: only a configured EHR, signing with the key at its JWKS URL, may call the services. */
describe('CDS client authentication', () => {
  const serviceUrl = 'https://draft-agent.example';
  let jwksServer: Server;
  let jwksUrl: string;
  let ehrKey: CryptoKey;
  let strangerKey: CryptoKey;

  beforeAll(async () => {
    const ehr = await generateKeyPair('ES384');
    const stranger = await generateKeyPair('ES384');
    ehrKey = ehr.privateKey;
    strangerKey = stranger.privateKey;
    const jwk = { ...(await exportJWK(ehr.publicKey)), kid: 'ehr-1', alg: 'ES384' };
    jwksServer = createServer((_request, response) => {
      response.setHeader('content-type', 'application/json');
      response.end(JSON.stringify({ keys: [jwk] }));
    });
    await new Promise<void>((resolve) => jwksServer.listen(0, '127.0.0.1', resolve));
    jwksUrl = `http://127.0.0.1:${(jwksServer.address() as AddressInfo).port}/jwks.json`;
  });
  afterAll(() => new Promise((resolve) => jwksServer.close(resolve)));

  const token = (
    key: CryptoKey,
    claims: { iss?: string; aud?: string; expiresIn?: string; jti?: string } = {},
  ) =>
    new SignJWT({})
      .setProtectedHeader({ alg: 'ES384', kid: 'ehr-1', typ: 'JWT' })
      .setIssuer(claims.iss ?? 'https://ehr.example')
      .setAudience(claims.aud ?? `${serviceUrl}/cds-services/guideline-nudges-patient-view`)
      .setIssuedAt()
      .setExpirationTime(claims.expiresIn ?? '5m')
      .setJti(claims.jti ?? randomUUID())
      .sign(key);

  it('accepts the configured EHR once per token, and refuses everything else', async () => {
    const authenticate = cdsClientAuthenticator([{ issuer: 'https://ehr.example', jwksUrl }], serviceUrl);
    const good = await token(ehrKey);
    expect(await authenticate(`Bearer ${good}`)).toBe(true);
    expect(await authenticate(`Bearer ${good}`)).toBe(false); // replayed jti
    expect(await authenticate(undefined)).toBe(false);
    expect(await authenticate('Bearer not-a-jwt')).toBe(false);
    expect(await authenticate(`Bearer ${await token(strangerKey)}`)).toBe(false); // signed with another key
    expect(await authenticate(`Bearer ${await token(ehrKey, { iss: 'https://other.example' })}`)).toBe(false);
    expect(
      await authenticate(`Bearer ${await token(ehrKey, { aud: 'https://elsewhere.example/cds-services' })}`),
    ).toBe(false);
    expect(await authenticate(`Bearer ${await token(ehrKey, { expiresIn: '-1m' })}`)).toBe(false);
  });
});
