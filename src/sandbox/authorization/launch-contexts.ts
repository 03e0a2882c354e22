import { randomBytes } from 'node:crypto';

/**
 * What a launch puts in context: the EHR creates a launch id bound to a patient, an encounter and the signed-in
 * clinician, hands it to the app (`launch=`), and the authorization server binds it to the grant the app gets.
 * The token response and every FHIR request made with the token read the context back through the grant.
 */
export interface LaunchContext {
  patient: string;
  encounter?: string;
  /** The clinician (Practitioner id) the EHR has signed in. */
  practitioner?: string;
}

export interface GrantContext {
  patient?: string;
  encounter?: string;
  /** Absolute reference to the user's FHIR resource, as the id_token's fhirUser. */
  fhirUser?: string;
}

interface Expiring<T> {
  value: T;
  expiresAt: number;
}

const launchLifetimeSeconds = 3600;

export class LaunchContexts {
  readonly #launches = new Map<string, Expiring<LaunchContext>>();
  readonly #grants = new Map<string, Expiring<GrantContext>>();
  readonly #now: () => number;

  constructor(now: () => number = Date.now) {
    this.#now = now;
  }

  /** An opaque launch id (256 random bits) for this context, valid for an hour. */
  createLaunch(context: LaunchContext): string {
    this.#sweep();
    const launch = randomBytes(32).toString('base64url');
    this.#launches.set(launch, {
      value: { ...context },
      expiresAt: this.#now() + launchLifetimeSeconds * 1000,
    });
    return launch;
  }

  findLaunch(launch: string | undefined): LaunchContext | undefined {
    const found = launch ? this.#launches.get(launch) : undefined;
    return found && found.expiresAt > this.#now() ? found.value : undefined;
  }

  bindGrant(grantId: string, context: GrantContext, lifetimeSeconds: number): void {
    this.#sweep();
    this.#grants.set(grantId, { value: context, expiresAt: this.#now() + lifetimeSeconds * 1000 });
  }

  forGrant(grantId: string | undefined): GrantContext | undefined {
    const found = grantId ? this.#grants.get(grantId) : undefined;
    return found && found.expiresAt > this.#now() ? found.value : undefined;
  }

  #sweep(): void {
    const now = this.#now();
    for (const map of [this.#launches, this.#grants] as Map<string, Expiring<unknown>>[])
      for (const [key, entry] of map) if (entry.expiresAt <= now) map.delete(key);
  }
}
