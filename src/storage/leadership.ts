import pg from 'pg';

/**
 * Which replica runs the scheduled work (the polling schedule, the purge, the subscription watchdog).
 * With PostgreSQL: whoever holds a session advisory lock on a connection of its own. The lock lives as
 * long as that connection, so a leader that dies (SIGKILL, a lost host) releases it with its
 * connection, and another replica, trying every `retryMs`, takes over. The leader checks its
 * connection on the same period and steps down the moment it fails. Alone (SQLite), a process
 * always leads.
 */
export interface Leadership {
  readonly isLeader: boolean;
  close(): Promise<void>;
}

export const soleLeadership: Leadership = { isLeader: true, close: async () => undefined };

export interface AdvisoryLeadershipOptions {
  connectionString: string;
  /** What is led (one lock per name): `scheduler`. */
  name: string;
  retryMs?: number;
  onChange?: (isLeader: boolean) => void;
}

export class AdvisoryLockLeadership implements Leadership {
  readonly #options: AdvisoryLeadershipOptions;
  #client: pg.Client | undefined;
  #leader = false;
  #timer: NodeJS.Timeout | undefined;
  #closed = false;
  #attempt: Promise<void> = Promise.resolve();

  private constructor(options: AdvisoryLeadershipOptions) {
    this.#options = options;
  }

  /** Starts competing; resolves after the first attempt (leader or not). */
  static async start(options: AdvisoryLeadershipOptions): Promise<AdvisoryLockLeadership> {
    const leadership = new AdvisoryLockLeadership(options);
    await leadership.#tick();
    leadership.#timer = setInterval(() => {
      leadership.#attempt = leadership.#attempt.then(() => leadership.#tick());
    }, options.retryMs ?? 5_000);
    leadership.#timer.unref();
    return leadership;
  }

  get isLeader(): boolean {
    return this.#leader;
  }

  #set(leader: boolean): void {
    if (leader === this.#leader) return;
    this.#leader = leader;
    this.#options.onChange?.(leader);
  }

  async #drop(): Promise<void> {
    const client = this.#client;
    this.#client = undefined;
    this.#set(false);
    await client?.end().catch(() => undefined);
  }

  async #tick(): Promise<void> {
    if (this.#closed) return;
    try {
      if (!this.#client) {
        const client = new pg.Client({ connectionString: this.#options.connectionString });
        // A broken connection means the lock is gone with it: step down at once.
        client.on('error', () => void this.#drop());
        await client.connect();
        this.#client = client;
      }
      if (this.#leader) {
        await this.#client.query('select 1');
        return;
      }
      const { rows } = await this.#client.query<{ acquired: boolean }>(
        'select pg_try_advisory_lock(hashtext($1)) as acquired',
        [`ehr-agent:leader:${this.#options.name}`],
      );
      this.#set(rows[0]?.acquired === true);
    } catch {
      await this.#drop();
    }
  }

  async close(): Promise<void> {
    this.#closed = true;
    if (this.#timer) clearInterval(this.#timer);
    await this.#attempt;
    // Ending the connection releases the lock: another replica leads on its next try.
    await this.#drop();
  }
}
