import { createRemoteJWKSet, decodeJwt, jwtVerify } from 'jose';

/**
 * CDS Hooks 2.0 client authentication: the EHR signs a short-lived JWT (iss, aud = the service URL
 * it calls, exp, jti) with a key published at its JWKS URL. Only configured issuers are accepted,
 * each against its own JWKS; a replayed jti is refused while the token is still valid.
 */
export interface CdsClient {
  issuer: string;
  jwksUrl: string;
}

export function cdsClientAuthenticator(
  clients: CdsClient[],
  serviceBaseUrl: string,
  now: () => number = Date.now,
): (authorization: string | undefined) => Promise<boolean> {
  const keySets = new Map(
    clients.map((client) => [client.issuer, createRemoteJWKSet(new URL(client.jwksUrl))]),
  );
  const seenTokenIds = new Map<string, number>();
  const servicesUrl = `${serviceBaseUrl.replace(/\/+$/, '')}/cds-services`;

  return async (authorization) => {
    const token = /^Bearer\s+(\S+)$/i.exec(authorization ?? '')?.[1];
    if (!token) return false;
    let issuer: string | undefined;
    try {
      issuer = decodeJwt(token).iss;
    } catch {
      return false;
    }
    const keySet = issuer ? keySets.get(issuer) : undefined;
    if (!keySet) return false;
    try {
      const { payload } = await jwtVerify(token, keySet, {
        issuer,
        currentDate: new Date(now()),
        requiredClaims: ['exp', 'jti', 'aud'],
        maxTokenAge: '10m',
      });
      const audiences = [payload.aud ?? []].flat();
      if (!audiences.some((audience) => audience === servicesUrl || audience.startsWith(`${servicesUrl}/`)))
        return false;
      for (const [id, expiresAt] of seenTokenIds) if (expiresAt * 1000 < now()) seenTokenIds.delete(id);
      const tokenId = `${issuer}|${payload.jti}`;
      if (seenTokenIds.has(tokenId)) return false;
      seenTokenIds.set(tokenId, payload.exp as number);
      return true;
    } catch {
      return false;
    }
  };
}
