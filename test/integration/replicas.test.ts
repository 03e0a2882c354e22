import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { promisify } from 'node:util';
import type { DocumentReference, Provenance } from 'fhir/r4.js';
import pg from 'pg';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { notificationBundle } from '../support/notification-builder.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';
import { repoRoot } from '../support/shared-fixtures.ts';
import {
  type SmartAuthorizationServer,
  startSmartAuthorizationServer,
} from '../support/smart-authorization-server.ts';

/**
 * Three service processes (src/main.ts, as deployed) on one PostgreSQL, one FHIR server in its own
 * process, and a load balancer played by the test: 500 encounters are finished and their Backport
 * notifications (one subscription, numbered events) spread over the replicas, one in ten delivered to
 * two replicas at once; halfway one replica is SIGKILLed and what it no longer answers goes to the
 * others. A clinician's review session starts through the replica that dies and continues through the
 * other two. Then: exactly one draft and one AI Provenance per encounter, nothing lost, `rules stats`
 * and suppression the same from every replica, the session intact.
 */
const execFileAsync = promisify(execFile);
const patientCount = 25;
const encountersEach = 20;
const eventCount = patientCount * encountersEach;
const notifySecret = 'replica-test-notify-secret-0123456789';
const adminSecret = 'replica-test-admin-secret-0123456789';
const gateway = 'http://replicas.gateway.test';
const subscription = 'Subscription/replica-test';
const clientId = 'review-app';
const scopes = 'launch openid fhirUser patient/*.rs patient/DocumentReference.u patient/Provenance.c';

interface Replica {
  name: string;
  url: string;
  child: ChildProcess;
  environment: Record<string, string>;
  exited: Promise<void>;
  output: () => string;
}

const cleanups: (() => Promise<void> | void)[] = [];
let fhirUrl: string;
let patients: string[];
let auth: SmartAuthorizationServer;
let databaseUrl: string;
const replicas: Replica[] = [];

async function freePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as { port: number };
  await new Promise((resolve) => server.close(resolve));
  return port;
}

function firstLine(child: ChildProcess, what: string, match: (line: string) => boolean): Promise<string> {
  return new Promise((resolve, reject) => {
    let buffered = '';
    let errors = '';
    child.stderr?.on('data', (chunk: Buffer) => {
      errors = (errors + chunk.toString()).slice(-4000);
    });
    child.stdout?.on('data', (chunk: Buffer) => {
      buffered += chunk.toString();
      const lines = buffered.split('\n');
      buffered = lines.pop() ?? '';
      for (const line of lines) if (match(line)) resolve(line);
    });
    child.once('exit', (code, signal) => reject(new Error(`${what} exited (${code ?? signal}): ${errors}`)));
  });
}

async function startReplica(name: string, configFile: string): Promise<Replica> {
  const port = await freePort();
  const dataDir = mkdtempSync(path.join(tmpdir(), `replica-${name}-`));
  cleanups.push(() => rmSync(dataDir, { recursive: true, force: true }));
  const environment = {
    EHR_AGENT_CONFIG: configFile,
    DATABASE_URL: databaseUrl,
    PORT: String(port),
    DATA_DIR: dataDir,
    LOG_LEVEL: 'info',
  };
  const child = spawn(process.execPath, [path.join(repoRoot, 'src/main.ts')], {
    cwd: repoRoot,
    env: { ...process.env, ...environment },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let output = '';
  child.stderr?.on('data', (chunk: Buffer) => {
    output = (output + chunk.toString()).slice(-8000);
  });
  const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
  cleanups.push(async () => {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill('SIGTERM');
      await Promise.race([exited, new Promise((resolve) => setTimeout(resolve, 10_000))]);
      child.kill('SIGKILL');
    }
  });
  await firstLine(child, `replica ${name}`, (line) => line.includes('"service-started"'));
  return { name, url: `http://127.0.0.1:${port}`, child, environment, exited, output: () => output };
}

async function query<Row extends pg.QueryResultRow>(sql: string): Promise<Row[]> {
  const client = new pg.Client({ connectionString: databaseUrl });
  await client.connect();
  try {
    return (await client.query<Row>(sql)).rows;
  } finally {
    await client.end();
  }
}

/** A cookie jar of one browser: the Set-Cookie headers of each answer, sent back on the next request. */
class Browser {
  readonly cookies = new Map<string, string>();

  async get(url: string): Promise<Response> {
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { cookie: [...this.cookies].map(([name, value]) => `${name}=${value}`).join('; ') },
    });
    for (const header of response.headers.getSetCookie()) {
      const [pair] = header.split(';');
      const separator = (pair as string).indexOf('=');
      this.cookies.set((pair as string).slice(0, separator), (pair as string).slice(separator + 1));
    }
    return response;
  }
}

/** What a load balancer does with the replica of an answer: its address instead of the public one. */
const through = (replica: Replica, location: string) => location.replace(gateway, replica.url);

describe.skipIf(!postgresAvailable)('three replicas on one PostgreSQL', () => {
  beforeAll(async () => {
    const database = createTestDatabase('ehr_agent_replicas');
    databaseUrl = database.url;
    cleanups.push(() => database.drop());

    const fhirProcess = spawn(
      process.execPath,
      [
        path.join(repoRoot, 'test/support/replica-fhir-process.ts'),
        String(patientCount),
        String(encountersEach),
      ],
      { cwd: repoRoot, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    cleanups.push(() => {
      fhirProcess.kill('SIGKILL');
    });
    const started = JSON.parse(
      await firstLine(fhirProcess, 'the FHIR server', (line) => line.startsWith('{')),
    );
    fhirUrl = started.url;
    patients = started.patients;

    // The clinician's side: the EHR's authorization server in front of the same FHIR server.
    auth = await startSmartAuthorizationServer({ fhirUpstream: fhirUrl });
    cleanups.push(() => auth.close());
    auth.registerClient({
      clientId,
      allowedScopes: scopes.split(' '),
      redirectUris: [`${gateway}/smart/callback`],
    });

    const directory = mkdtempSync(path.join(tmpdir(), 'replicas-'));
    cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
    const configFile = path.join(directory, 'service.yaml');
    writeFileSync(
      configFile,
      JSON.stringify({
        host: '127.0.0.1',
        publicUrl: gateway,
        fhir: { baseUrl: fhirUrl, timeoutMs: 20_000 },
        notify: { secret: notifySecret },
        admin: { secret: adminSecret },
        queue: {
          concurrency: 2,
          leaseMs: 5_000,
          pollIntervalMs: 100,
          backoffBaseMs: 200,
          backoffMaxMs: 2_000,
        },
        storage: { leaderRetryMs: 500 },
        intake: {
          trackedSubscriptions: [subscription],
          subscription: { ensureOnStart: false },
          // The leader polls as the safety net for deliveries lost with the killed replica.
          polling: { cron: '*/10 * * * * *', initialLookbackMs: 0, overlapMs: 1_000 },
        },
        // The EHR's CDS client is the test: no JWT (the hooks' own authentication is tested elsewhere).
        rules: { cdsHooks: { allowUnauthenticated: true } },
        auth: {
          launch: {
            clientId,
            allowedIssuers: [auth.fhirBaseUrl],
            scopes,
            cookie: { secure: false, sameSite: 'lax', partitioned: false },
          },
        },
      }),
    );
    // One at a time: they migrate one schema; the contract test covers starting together.
    for (const name of ['a', 'b', 'c']) replicas.push(await startReplica(name, configFile));
  }, 180_000);

  afterAll(async () => {
    for (const cleanup of cleanups.reverse()) await cleanup();
  }, 60_000);

  it('drafts every event exactly once across replicas, survives a SIGKILL, and shares sessions, suppression and stats', async () => {
    const [first, second, doomed] = replicas as [Replica, Replica, Replica];
    const alive = () =>
      replicas.filter((replica) => replica.child.exitCode === null && !replica.child.signalCode);

    // A clinician opens the review app from the EHR: the launch lands on the replica that will die.
    const browser = new Browser();
    const launch = auth.createLaunch({ patient: patients[0] as string, encounter: 'rep-0-0' });
    const launched = await browser.get(
      `${doomed.url}/smart/launch?iss=${encodeURIComponent(auth.fhirBaseUrl)}&launch=${encodeURIComponent(launch)}`,
    );
    expect(launched.status).toBe(302);
    const authorized = await browser.get(launched.headers.get('location') as string);
    expect(authorized.status).toBe(302);
    // The EHR sends the browser back to the public URL; the balancer picks another replica.
    const callback = await browser.get(through(first, authorized.headers.get('location') as string));
    expect(callback.status).toBe(302);

    const encounters = patients.flatMap((_, patientIndex) =>
      Array.from({ length: encountersEach }, (_, number) => `rep-${patientIndex}-${number}`),
    );
    const deliver = async (replica: Replica, body: unknown): Promise<boolean> => {
      try {
        const response = await fetch(`${replica.url}/notify`, {
          method: 'POST',
          headers: { authorization: `Bearer ${notifySecret}`, 'content-type': 'application/fhir+json' },
          body: JSON.stringify(body),
        });
        return response.status === 200;
      } catch {
        return false;
      }
    };
    let next = 0;
    let redelivered = 0;
    const worker = async () => {
      for (;;) {
        const index = next++;
        if (index >= eventCount) return;
        const encounterId = encounters[index] as string;
        if (index === Math.floor(eventCount / 2)) doomed.child.kill('SIGKILL');
        // The hospital finishes the encounter, then its server notifies.
        const current = await (await fetch(`${fhirUrl}/Encounter/${encounterId}`)).json();
        const finished = await fetch(`${fhirUrl}/Encounter/${encounterId}`, {
          method: 'PUT',
          headers: { 'content-type': 'application/fhir+json' },
          body: JSON.stringify({
            ...current,
            status: 'finished',
            period: { ...current.period, end: current.period.start },
          }),
        });
        expect(finished.status).toBe(200);
        const body = notificationBundle({
          subscription,
          counter: index + 1,
          events: [
            { number: index + 1, focus: `Encounter/${encounterId}`, timestamp: new Date().toISOString() },
          ],
        });
        const targets = [replicas[index % 3] as Replica];
        if (index % 10 === 0) targets.push(replicas[(index + 1) % 3] as Replica);
        const answers = await Promise.all(targets.map((target) => deliver(target, body)));
        // Refused or unanswered (the dead replica): the balancer retries on a live one.
        if (!answers.some(Boolean)) {
          redelivered += 1;
          let delivered = false;
          for (let attempt = 0; !delivered && attempt < 20; attempt++) {
            const live = alive();
            delivered = await deliver(live[attempt % live.length] as Replica, body);
            if (!delivered) await new Promise((resolve) => setTimeout(resolve, 250));
          }
          expect(delivered).toBe(true);
        }
      }
    };
    const startedAt = Date.now();
    await Promise.all(Array.from({ length: 6 }, worker));
    await doomed.exited;
    expect(redelivered).toBeGreaterThan(0);

    // Every encounter drafted, by the two survivors (and whatever the dead one finished).
    const service = new FhirClient({ baseUrl: fhirUrl, timeoutMs: 30_000, maxPages: 100 });
    let drafts: DocumentReference[] = [];
    const deadline = Date.now() + 240_000;
    for (;;) {
      drafts = await service.search<DocumentReference>('DocumentReference', { _count: 1000 });
      const drafted = new Set(drafts.map((draft) => draft.context?.encounter?.[0]?.reference));
      if (encounters.every((id) => drafted.has(`Encounter/${id}`))) break;
      if (Date.now() > deadline)
        throw new Error(
          `${encounters.filter((id) => !drafted.has(`Encounter/${id}`)).length} encounters undrafted`,
        );
      await new Promise((resolve) => setTimeout(resolve, 2_000));
    }
    const drainedAt = Date.now();
    // Nothing still running or waiting, nothing dead-lettered.
    await expect
      .poll(
        async () =>
          query<{ state: string; total: number }>(
            `select state::text, count(*)::int as total from pgboss.job where state in ('created', 'retry', 'active', 'failed') group by state`,
          ),
        { timeout: 30_000, interval: 500 },
      )
      .toEqual([]);

    const perEncounter = Map.groupBy(drafts, (draft) => draft.context?.encounter?.[0]?.reference);
    const ours = encounters.map((id) => perEncounter.get(`Encounter/${id}`)?.length ?? 0);
    expect(ours.filter((count) => count !== 1)).toEqual([]);
    const provenances = await service.search<Provenance>('Provenance', { _count: 1000 });
    const byTarget = Map.groupBy(
      provenances.flatMap((provenance) =>
        (provenance.target ?? []).map((target) => (target.reference ?? '').replace(/\/_history\/.*$/, '')),
      ),
      (reference) => reference,
    );
    const ourDrafts = drafts.filter((draft) =>
      encounters.includes((draft.context?.encounter?.[0]?.reference ?? '').replace('Encounter/', '')),
    );
    expect(ourDrafts.map((draft) => byTarget.get(`DocumentReference/${draft.id}`)?.length ?? 0)).toEqual(
      ourDrafts.map(() => 1),
    );

    // `rules stats` from every replica's own environment: one answer, with rules that fired.
    const statistics = await Promise.all(
      alive().map(async (replica) => {
        const { stdout } = await execFileAsync(
          process.execPath,
          [path.join(repoRoot, 'src/cli/rules.ts'), 'stats', '--csv'],
          {
            cwd: repoRoot,
            env: { ...process.env, ...replica.environment },
          },
        );
        return stdout;
      }),
    );
    expect(statistics).toHaveLength(2);
    expect(statistics[1]).toBe(statistics[0]);
    expect((statistics[0] as string).trim().split('\n').length).toBeGreaterThan(1);

    // Suppression: a rule shown to a patient once is suppressed on that patient's other encounters,
    // whichever replica drafted them: one shown delivery per rule and patient.
    const shown = await query<{ rule_id: string; patient_id: string; total: number }>(
      `select rule_id, patient_id, count(*)::int as total from ehr_agent.nudge_delivery d
         where not exists (select 1 from ehr_agent.nudge_delivery_mode m where m.nudge_id = d.nudge_id and m.silent = 1)
         group by rule_id, patient_id`,
    );
    expect(shown.length).toBeGreaterThan(0);
    expect(shown.filter((row) => row.total !== 1)).toEqual([]);

    // What a clinician is shown for a drafted visit is the same from every replica: the cards drafted
    // (by whichever replica drafted it), not a live evaluation that the shared deliveries would suppress.
    const occasions = await query<{ patient_id: string; occasion_id: string }>(
      `select distinct patient_id, occasion_id from ehr_agent.nudge_delivery order by 1, 2 limit 5`,
    );
    let cardsSeen = 0;
    for (const { patient_id: patientId, occasion_id: encounterId } of occasions) {
      const answers = await Promise.all(
        [first, second].map(async (replica) => {
          const response = await fetch(`${replica.url}/cds-services/guideline-nudges-patient-view`, {
            method: 'POST',
            headers: { 'content-type': 'application/json' },
            body: JSON.stringify({
              hook: 'patient-view',
              hookInstance: crypto.randomUUID(),
              context: { patientId, encounterId, userId: 'Practitioner/replica-test' },
            }),
          });
          expect(response.status).toBe(200);
          const { cards } = (await response.json()) as { cards: { uuid: string; summary: string }[] };
          return cards.map((card) => `${card.uuid} ${card.summary}`).sort();
        }),
      );
      expect(answers[1]).toEqual(answers[0]);
      cardsSeen += answers[0]?.length ?? 0;
    }
    expect(cardsSeen).toBeGreaterThan(0);

    // The session started through the dead replica goes on through both survivors.
    for (const replica of [first, second]) {
      const response = await browser.get(`${replica.url}/api/drafts`);
      expect(response.status).toBe(200);
      const listed = (await response.json()) as { drafts: { id: string }[] };
      expect(listed.drafts.length).toBeGreaterThanOrEqual(encountersEach);
    }

    const sources = await query<{ source: string; total: number }>(
      `select data->>'source' as source, count(*)::int as total from pgboss.job group by 1 order by 1`,
    );
    console.info(
      JSON.stringify({
        events: eventCount,
        redeliveredAfterKill: redelivered,
        draftedInSeconds: Math.round((drainedAt - startedAt) / 100) / 10,
        jobsBySource: Object.fromEntries(sources.map((row) => [row.source, row.total])),
      }),
    );
  }, 600_000);
});
