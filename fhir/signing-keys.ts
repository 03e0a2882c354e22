import { createPrivateKey, createPublicKey } from 'node:crypto';
import { chmod, mkdir, readFile, stat, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { calculateJwkThumbprint, exportJWK, generateKeyPair, importJWK, type JWK } from 'jose';

/**
 * The key the service signs its client assertions with (SMART Backend Services, and confidential App
 * Launch). From a configured PEM or JWK file, or generated on first start and kept in the data directory,
 * so a site can register the JWKS URL (`<publicUrl>/.well-known/jwks.json`) before go-live.
 */
export type SigningAlgorithm = 'ES384' | 'RS384';

export interface SigningKey {
  alg: SigningAlgorithm;
  kid: string;
  privateKey: CryptoKey;
  /** Public half only, with kid, alg, use and key_ops: what the JWKS endpoint publishes. */
  publicJwk: JWK;
  /** Where the key came from (a path), for start-up logs. */
  source: string;
  generated: boolean;
}

export interface JsonWebKeySet {
  keys: JWK[];
}

const publicMembers: Record<string, string[]> = { EC: ['kty', 'crv', 'x', 'y'], RSA: ['kty', 'n', 'e'] };

export function generatedKeyPath(dataDir: string, alg: SigningAlgorithm): string {
  return path.join(dataDir, `smart-backend-${alg.toLowerCase()}.private.jwk.json`);
}

function checkKeyFitsAlgorithm(jwk: JWK, alg: SigningAlgorithm, source: string): void {
  if (alg === 'ES384' && (jwk.kty !== 'EC' || jwk.crv !== 'P-384')) {
    throw new Error(`${source}: ES384 needs an EC P-384 key, found ${jwk.kty} ${jwk.crv ?? ''}`.trim());
  }
  if (alg === 'RS384') {
    if (jwk.kty !== 'RSA') throw new Error(`${source}: RS384 needs an RSA key, found ${jwk.kty}`);
    const modulusBits = Buffer.from(jwk.n ?? '', 'base64url').length * 8;
    if (modulusBits < 2048)
      throw new Error(`${source}: RSA key of ${modulusBits} bits; at least 2048 needed`);
  }
  if (!jwk.d) throw new Error(`${source}: not a private key`);
}

function parseKeyFile(text: string, source: string): JWK {
  const trimmed = text.trim();
  if (trimmed.startsWith('-----BEGIN')) {
    // node:crypto reads PKCS#8, SEC1 ("EC PRIVATE KEY") and PKCS#1 ("RSA PRIVATE KEY") alike.
    return createPrivateKey({ key: trimmed, format: 'pem' }).export({ format: 'jwk' }) as JWK;
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(trimmed);
  } catch {
    throw new Error(`${source}: neither a PEM private key nor JSON`);
  }
  // A JWKS with one private key is accepted too: some tools export keys that way.
  const candidate = (parsed as { keys?: unknown[] }).keys?.[0] ?? parsed;
  if (typeof candidate !== 'object' || candidate === null || typeof (candidate as JWK).kty !== 'string') {
    throw new Error(`${source}: not a JWK`);
  }
  return candidate as JWK;
}

async function toSigningKey(
  jwk: JWK,
  alg: SigningAlgorithm,
  source: string,
  generated: boolean,
  keyId: string | undefined,
): Promise<SigningKey> {
  checkKeyFitsAlgorithm(jwk, alg, source);
  const publicPart: JWK = {};
  for (const member of publicMembers[jwk.kty as string]) {
    (publicPart as Record<string, unknown>)[member] = (jwk as Record<string, unknown>)[member];
  }
  const kid = keyId ?? jwk.kid ?? (await calculateJwkThumbprint(publicPart, 'sha256'));
  const privateKey = (await importJWK({ ...jwk, alg }, alg)) as CryptoKey;
  return {
    alg,
    kid,
    privateKey,
    publicJwk: { ...publicPart, kid, alg, use: 'sig', key_ops: ['verify'] },
    source,
    generated,
  };
}

async function readOrGenerate(
  dataDir: string,
  alg: SigningAlgorithm,
): Promise<{ jwk: JWK; generated: boolean }> {
  const file = generatedKeyPath(dataDir, alg);
  await mkdir(dataDir, { recursive: true, mode: 0o700 });
  try {
    const existing = JSON.parse(await readFile(file, 'utf8')) as JWK;
    // The file holds a private key: keep it private even if someone loosened its mode.
    if (((await stat(file)).mode & 0o077) !== 0) await chmod(file, 0o600);
    return { jwk: existing, generated: false };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'ENOENT') throw error;
  }
  const pair = await generateKeyPair(alg, {
    extractable: true,
    ...(alg === 'RS384' ? { modulusLength: 3072 } : {}),
  });
  const jwk = await exportJWK(pair.privateKey);
  jwk.kid = await calculateJwkThumbprint(
    Object.fromEntries(publicMembers[jwk.kty as string].map((member) => [member, jwk[member as keyof JWK]])),
    'sha256',
  );
  try {
    // 'wx' fails if another replica wrote the file first; that replica's key then wins for everyone.
    await writeFile(file, `${JSON.stringify(jwk, null, 2)}\n`, { mode: 0o600, flag: 'wx' });
    return { jwk, generated: true };
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    return { jwk: JSON.parse(await readFile(file, 'utf8')) as JWK, generated: false };
  }
}

export async function loadSigningKey(options: {
  alg: SigningAlgorithm;
  dataDir: string;
  keyFile?: string;
  keyId?: string;
}): Promise<SigningKey> {
  if (options.keyFile) {
    const jwk = parseKeyFile(await readFile(options.keyFile, 'utf8'), options.keyFile);
    return toSigningKey(jwk, options.alg, options.keyFile, false, options.keyId);
  }
  const { jwk, generated } = await readOrGenerate(options.dataDir, options.alg);
  return toSigningKey(
    jwk,
    options.alg,
    generatedKeyPath(options.dataDir, options.alg),
    generated,
    options.keyId,
  );
}

/**
 * Public keys published next to the signing key during a rotation: the next key before the switch, the previous
 * one after it, so a server that cached the JWKS keeps verifying. Each file may hold a PEM (public or private), a
 * JWK or a JWKS; only public members are published.
 */
export async function loadPublishedKeys(files: readonly string[]): Promise<JWK[]> {
  const published: JWK[] = [];
  for (const file of files) {
    const text = (await readFile(file, 'utf8')).trim();
    let candidates: JWK[];
    if (text.startsWith('-----BEGIN')) {
      candidates = [createPublicKey({ key: text, format: 'pem' }).export({ format: 'jwk' }) as JWK];
    } else {
      const parsed = JSON.parse(text) as JWK | { keys: JWK[] };
      candidates = 'keys' in parsed && Array.isArray(parsed.keys) ? parsed.keys : [parsed as JWK];
    }
    for (const candidate of candidates) {
      const members = publicMembers[candidate.kty as string];
      if (!members) throw new Error(`${file}: unsupported key type ${candidate.kty}`);
      const publicPart = Object.fromEntries(
        members.map((member) => [member, candidate[member as keyof JWK]]),
      ) as JWK;
      const alg =
        candidate.alg ??
        (candidate.kty === 'RSA' ? 'RS384' : candidate.crv === 'P-384' ? 'ES384' : undefined);
      published.push({
        ...publicPart,
        kid: candidate.kid ?? (await calculateJwkThumbprint(publicPart, 'sha256')),
        ...(alg ? { alg } : {}),
        use: 'sig',
        key_ops: ['verify'],
      });
    }
  }
  return published;
}

export function publicJwks(keys: readonly SigningKey[], published: readonly JWK[] = []): JsonWebKeySet {
  const signing = keys.map((key) => key.publicJwk);
  const signingKids = new Set(signing.map((key) => key.kid));
  return { keys: [...signing, ...published.filter((key) => !signingKids.has(key.kid))] };
}
