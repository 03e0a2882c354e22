import { createHmac, timingSafeEqual } from 'node:crypto';

/**
 * Medplum signs each rest-hook delivery: `X-Signature` is the hex HMAC-SHA256 of the raw body with
 * the subscription's secret. The comparison is constant-time. With a subscription id (the
 * X-Medplum-Subscription header) only that subscription's secret is tried.
 */
export function medplumSignature(rawBody: Buffer, secret: string): string {
  return createHmac('sha256', secret).update(rawBody).digest('hex');
}

export function verifyMedplumSignature(
  rawBody: Buffer,
  signature: string,
  secrets: Record<string, string>,
  subscriptionId: string | undefined,
): boolean {
  if (!/^[0-9a-f]{64}$/i.test(signature)) return false;
  const given = Buffer.from(signature.toLowerCase(), 'hex');
  const candidates =
    subscriptionId !== undefined
      ? [secrets[subscriptionId]].filter((secret): secret is string => secret !== undefined)
      : Object.values(secrets);
  let valid = false;
  for (const secret of candidates) {
    const expected = Buffer.from(medplumSignature(rawBody, secret), 'hex');
    // No early exit: the time taken does not say which secret matched.
    if (timingSafeEqual(given, expected)) valid = true;
  }
  return valid;
}
