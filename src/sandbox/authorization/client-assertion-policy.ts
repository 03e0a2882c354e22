/**
 * SMART Backend Services' rules for a client assertion beyond what oidc-provider checks itself (signature with
 * the client's registered keys, alg among ES384/RS384, exp not passed, jti never seen before): `aud` is the token
 * URL exactly (oidc-provider also accepts the issuer), `exp` is at most five minutes ahead (it sets no bound),
 * `sub` = `iss` = client id, and the header names its key (`kid`) and `typ: JWT`.
 * Returns the reason for refusing, or undefined.
 */
export const maxAssertionLifetimeSeconds = 300;

export function clientAssertionProblem(
  claims: Record<string, unknown>,
  header: Record<string, unknown>,
  expected: { clientId: string; tokenUrl: string; nowSeconds: number },
): string | undefined {
  const audience = Array.isArray(claims.aud) && claims.aud.length === 1 ? claims.aud[0] : claims.aud;
  if (audience !== expected.tokenUrl)
    return `aud must be the token URL ${expected.tokenUrl} exactly, not ${JSON.stringify(claims.aud)}`;
  if (typeof claims.exp !== 'number') return 'exp is required';
  if (claims.exp > expected.nowSeconds + maxAssertionLifetimeSeconds)
    return `exp is ${claims.exp - expected.nowSeconds} s ahead; at most ${maxAssertionLifetimeSeconds} s is accepted`;
  if (claims.sub !== expected.clientId || claims.iss !== expected.clientId)
    return 'iss and sub must both be the client id';
  if (typeof header.kid !== 'string' || header.kid.length === 0) return 'the header must name its key (kid)';
  if (header.typ !== 'JWT') return 'the header typ must be JWT';
  return undefined;
}
