import { createCipheriv, createDecipheriv, hkdfSync, randomBytes } from 'node:crypto';
import { z } from 'zod';
import { isFhirId } from '../../fhir/fhir-id.ts';

/**
 * The one-time link's token: what it is bound to (patient, visit, expiry, a random nonce), sealed with
 * AES-256-GCM under a key derived from the configured secret. The URL therefore carries nothing readable
 * (no patient or visit id), and a token that was altered or made without the secret fails authentication.
 * No state is kept here: "one time" is held by the FHIR server (the answers are a conditional create on an
 * identifier derived from the visit, so a second submission finds the first).
 *
 * Sealing also carries the interview's state between pages (answers so far, generated questions), so the
 * patient's browser holds it without being able to change what the model asked.
 */
export interface InvitationClaims {
  patientId: string;
  /** The visit: an Encounter (planned) or an Appointment (booked), exactly one of the two. */
  encounterId?: string;
  appointmentId?: string;
  /** Milliseconds since the epoch. */
  expiresAt: number;
  /** Random, so two links for the same visit differ and a token cannot be guessed. */
  nonce: string;
}

const claimsSchema = z
  .object({
    patientId: z.string().refine(isFhirId),
    encounterId: z.string().refine(isFhirId).optional(),
    appointmentId: z.string().refine(isFhirId).optional(),
    expiresAt: z.number().int().positive(),
    nonce: z.string().regex(/^[A-Za-z0-9_-]{16,64}$/),
  })
  .strict()
  .refine((claims) => (claims.encounterId === undefined) !== (claims.appointmentId === undefined), {
    message: 'a link is bound to exactly one visit',
  });

/** The resource a link's visit is keyed on: `Encounter/<id>` or `Appointment/<id>`. */
export function visitKey(claims: Pick<InvitationClaims, 'encounterId' | 'appointmentId'>): string {
  return claims.encounterId ? `Encounter/${claims.encounterId}` : `Appointment/${claims.appointmentId}`;
}

export type OpenedToken<T> = { ok: true; value: T } | { ok: false; problem: 'forged' | 'expired' };

const ivBytes = 12;
const tagBytes = 16;
/** Far above any real token or interview state; a longer value is refused before any work. */
const maxSealedCharacters = 24_000;

export class LinkSealer {
  readonly #key: Buffer;

  constructor(secret: string, purpose = 'patient-intake-link') {
    this.#key = Buffer.from(hkdfSync('sha256', secret, 'ehr-draft-agent', purpose, 32));
  }

  seal(value: unknown): string {
    const iv = randomBytes(ivBytes);
    const cipher = createCipheriv('aes-256-gcm', this.#key, iv);
    const body = Buffer.concat([cipher.update(JSON.stringify(value), 'utf8'), cipher.final()]);
    return Buffer.concat([iv, body, cipher.getAuthTag()]).toString('base64url');
  }

  /** The sealed value, or undefined when it was altered, truncated or sealed under another key. */
  open(sealed: string): unknown {
    if (sealed.length > maxSealedCharacters || !/^[A-Za-z0-9_-]+$/.test(sealed)) return undefined;
    const bytes = Buffer.from(sealed, 'base64url');
    if (bytes.length < ivBytes + tagBytes + 2) return undefined;
    try {
      const decipher = createDecipheriv('aes-256-gcm', this.#key, bytes.subarray(0, ivBytes));
      decipher.setAuthTag(bytes.subarray(bytes.length - tagBytes));
      const text = Buffer.concat([
        decipher.update(bytes.subarray(ivBytes, bytes.length - tagBytes)),
        decipher.final(),
      ]).toString('utf8');
      return JSON.parse(text);
    } catch {
      return undefined;
    }
  }
}

export function newNonce(): string {
  return randomBytes(18).toString('base64url');
}

export function sealInvitation(sealer: LinkSealer, claims: InvitationClaims): string {
  return sealer.seal(claimsSchema.parse(claims));
}

export function openInvitation(sealer: LinkSealer, token: string, now: Date): OpenedToken<InvitationClaims> {
  const parsed = claimsSchema.safeParse(sealer.open(token));
  if (!parsed.success) return { ok: false, problem: 'forged' };
  if (parsed.data.expiresAt <= now.getTime()) return { ok: false, problem: 'expired' };
  return { ok: true, value: parsed.data };
}
