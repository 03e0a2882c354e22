import { isIP } from 'node:net';
import { z } from 'zod';

/**
 * The HTTP server's own settings, under the `http` key. `trustProxy` says which peers may tell the
 * service, through X-Forwarded-For, who the client really is. Off by default: the peer address is the
 * socket's, so no client can choose whose rate-limit quota it spends. Values as express's
 * `trust proxy`: true (trust every hop: only behind a proxy that overwrites the header), a number of
 * hops, or a list of addresses, CIDR ranges and the names loopback, linklocal and uniquelocal.
 */
const presetNames = new Set(['loopback', 'linklocal', 'uniquelocal']);

function isProxyAddress(entry: string): boolean {
  if (presetNames.has(entry)) return true;
  const [address, prefix, ...rest] = entry.split('/');
  const family = isIP(address);
  if (family === 0 || rest.length > 0) return false;
  if (prefix === undefined) return true;
  if (!/^\d{1,3}$/.test(prefix)) return false;
  return Number(prefix) <= (family === 4 ? 32 : 128);
}

/** Environment variables arrive as strings: `true`, `2` or `loopback, 10.0.0.0/8`. */
function fromText(value: unknown): unknown {
  if (typeof value !== 'string') return value;
  const text = value.trim();
  if (text === 'true' || text === 'false') return text === 'true';
  if (/^\d+$/.test(text)) return Number(text);
  return text.split(/[\s,]+/).filter(Boolean);
}

export const trustProxySchema = z.preprocess(
  fromText,
  z.union([
    z.boolean(),
    z.number().int().min(0).max(32),
    z
      .array(
        z
          .string()
          .trim()
          .refine(isProxyAddress, 'must be an IP address, a CIDR range, loopback, linklocal or uniquelocal'),
      )
      .min(1),
  ]),
);

export type TrustProxySetting = z.infer<typeof trustProxySchema>;

export const httpConfigSchema = z
  .object({
    /** Which proxies may name the client in X-Forwarded-For (default: none; the socket's peer counts). */
    trustProxy: trustProxySchema.default(false),
  })
  .strict();
