import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import type { StoredDraft } from '../../fhir/draft-store.ts';
import type { ParsedNotification } from '../../fhir/subscription-notification.ts';
import { SqlDraftStore, SqliteDraftStore } from '../../src/drafts/sqlite-draft-store.ts';
import { SqliteSessionStore, SqlSessionStore } from '../../src/http/sqlite-session-store.ts';
import { EventCounterTracker } from '../../src/intake/event-counter-tracker.ts';
import { IntakeStateStore } from '../../src/intake/intake-state-store.ts';
import { TrackedSubscriptions } from '../../src/intake/tracked-subscriptions.ts';
import { DraftedNudgeCache, type DraftedNudges, SqlDraftedNudges } from '../../src/rules/drafted-nudges.ts';
import type { RuleEvaluation } from '../../src/rules/evaluate.ts';
import type { NudgeStore } from '../../src/rules/nudge-store.ts';
import { SqliteNudgeStore, SqlNudgeStore } from '../../src/rules/sqlite-nudge-store.ts';
import { PostgresDatabase } from '../../src/storage/postgres-database.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * Every store's contract, run on both adapters: the embedded SQLite files and the shared PostgreSQL.
 * "Replicas" are two stores on the same storage (two pools on one database for PostgreSQL; one
 * process's store for SQLite, which has one writer), so what one writes the other reads.
 */
const cleanups: (() => Promise<void> | void)[] = [];
afterAll(async () => {
  for (const cleanup of cleanups.reverse()) await cleanup();
});

interface Stores {
  drafts: SqlDraftStore;
  sessions: SqlSessionStore<{ user: string }>;
  intake: IntakeStateStore;
  nudges: NudgeStore;
  drafted: DraftedNudges;
}

/** Storage of the test's own, and a way to open the stores on it as another replica would. */
type OpenReplica = () => Promise<Stores>;

async function sqliteStorage(): Promise<OpenReplica> {
  const directory = mkdtempSync(path.join(tmpdir(), 'store-contract-'));
  cleanups.push(() => rmSync(directory, { recursive: true, force: true }));
  const stores: Stores = {
    drafts: new SqliteDraftStore(path.join(directory, 'drafts.sqlite')),
    sessions: new SqliteSessionStore(path.join(directory, 'sessions.sqlite')),
    intake: new IntakeStateStore(path.join(directory, 'intake.sqlite')),
    nudges: new SqliteNudgeStore(path.join(directory, 'rules.sqlite')),
    drafted: new DraftedNudgeCache(),
  };
  cleanups.push(async () => {
    await stores.drafts.close();
    stores.sessions.close();
    await stores.intake.close();
    await stores.nudges.close();
  });
  return async () => stores;
}

async function postgresStorage(): Promise<OpenReplica> {
  const database = createTestDatabase();
  cleanups.push(() => database.drop());
  return async () => {
    const shared = await PostgresDatabase.open({ connectionString: database.url });
    cleanups.push(() => shared.close());
    return {
      drafts: new SqlDraftStore(shared),
      sessions: new SqlSessionStore(shared),
      intake: new IntakeStateStore(shared),
      nudges: new SqlNudgeStore(shared),
      drafted: new SqlDraftedNudges(shared),
    };
  };
}

const adapters: [string, () => Promise<OpenReplica>, boolean][] = [
  ['SQLite', sqliteStorage, true],
  ['PostgreSQL', postgresStorage, postgresAvailable],
];

function draft(id: string, updatedAt: string, patientId = 'p1'): StoredDraft {
  return {
    id,
    mode: 'hold',
    identifierValue: `e-${id}:progress-summary:extractive-1`,
    patientId,
    encounterId: `e-${id}`,
    kind: 'progress-summary',
    status: 'preliminary',
    title: 'Draft',
    text: 'text',
    citations: ['Condition/c1'],
    flagged: false,
    document: { resourceType: 'DocumentReference', id, status: 'current', content: [] },
    provenance: { resourceType: 'Provenance', target: [], recorded: updatedAt, agent: [] },
    device: { resourceType: 'Device' },
    events: [],
    createdAt: updatedAt,
    updatedAt,
  };
}

function eventNotification(subscription: string, numbers: number[], counter?: number): ParsedNotification {
  return {
    subscription,
    topic: undefined,
    status: 'active',
    type: 'event-notification',
    eventsSinceSubscriptionStart: counter ?? Math.max(...numbers),
    events: numbers.map((eventNumber) => ({
      eventNumber,
      timestamp: `2026-12-01T10:00:${String(eventNumber % 60).padStart(2, '0')}Z`,
      focus: `Encounter/enc-${eventNumber}`,
      resource: undefined,
    })),
  };
}

const evaluation = (nudgeId: string, patientId: string): RuleEvaluation =>
  ({
    nudges: [
      {
        id: nudgeId,
        ruleId: 'colorectal-screening',
        ruleVersion: '1',
        patientId,
        occasionId: 'enc-1',
        summary: 'Colorectal cancer screening is due',
        firedAt: '2026-12-01T10:00:00Z',
      },
    ],
    results: [],
  }) as unknown as RuleEvaluation;

for (const [name, storage, available] of adapters) {
  describe.skipIf(!available)(`store contract: ${name}`, () => {
    it('drafts: lookups, optimistic replace, regenerations and generations, record changes, purge', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      await one.drafts.insert(draft('d1', '2026-01-01T00:00:00.000Z'));
      await one.drafts.insert(draft('d2', '2026-06-01T00:00:00.000Z'));
      await one.drafts.insert(draft('d3', '2026-07-01T00:00:00.000Z', 'p2'));
      await expect(one.drafts.insert(draft('d1', '2026-08-01T00:00:00.000Z'))).rejects.toThrow();
      expect((await other.drafts.get('d1'))?.citations).toEqual(['Condition/c1']);
      expect((await other.drafts.findByIdentifier('e-d2:progress-summary:extractive-1'))?.id).toBe('d2');
      expect((await other.drafts.listByPatient('p1')).map((stored) => stored.id)).toEqual(['d2', 'd1']);

      // Two reviewers saving the same version: the second loses.
      const edited = { ...draft('d2', '2026-06-02T00:00:00.000Z'), text: 'edited' };
      expect(await one.drafts.replace(edited, '2026-06-01T00:00:00.000Z')).toBe(true);
      expect(await other.drafts.replace({ ...edited, text: 'stale' }, '2026-06-01T00:00:00.000Z')).toBe(
        false,
      );
      expect((await other.drafts.get('d2'))?.text).toBe('edited');

      const replaces = { mode: 'hold' as const, id: 'd2' };
      await one.drafts.requestRegeneration({
        encounterId: 'e-d2',
        kind: 'progress-summary',
        replaces,
        requestedAt: '2026-06-03T00:00:00.000Z',
      });
      expect((await other.drafts.pendingRegeneration('e-d2', 'progress-summary'))?.replaces).toEqual(
        replaces,
      );
      await other.drafts.completeRegeneration('e-d2', 'progress-summary', 2);
      // A late completion of an older generation never moves the count back.
      await one.drafts.completeRegeneration('e-d2', 'progress-summary', 1);
      expect(await one.drafts.pendingRegeneration('e-d2', 'progress-summary')).toBeUndefined();
      expect(await other.drafts.generation('e-d2', 'progress-summary')).toBe(2);
      expect(await other.drafts.generation('e-none', 'progress-summary')).toBe(0);

      const change = { checkedAt: '2026-06-04T00:00:00.000Z', changes: [] } as never;
      await one.drafts.noteRecordChange('d2', change);
      expect([...(await other.drafts.recordChanges(['d2', 'd1', 'd2'])).keys()]).toEqual(['d2']);

      expect(await other.drafts.purge(new Date('2026-03-01T00:00:00.000Z'))).toBe(1);
      expect(await one.drafts.get('d1')).toBeUndefined();
      expect(await one.drafts.count()).toBe(2);
    });

    it('sessions: a session saved through one replica is read, replaced and deleted through another; expiry holds', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      await one.sessions.set('key-1', { user: 'clinician-a' }, 60);
      expect(await other.sessions.get('key-1')).toEqual({ user: 'clinician-a' });
      await other.sessions.set('key-1', { user: 'clinician-b' }, 60);
      expect(await one.sessions.get('key-1')).toEqual({ user: 'clinician-b' });
      await one.sessions.set('expired', { user: 'x' }, -1);
      expect(await other.sessions.get('expired')).toBeUndefined();
      await other.sessions.delete('key-1');
      expect(await one.sessions.get('key-1')).toBeUndefined();
    });

    it('intake state: redeliveries to two replicas at once are counted fresh exactly once; gaps are shared', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      const subscription = 'Subscription/ours';
      const trackerOne = new EventCounterTracker(one.intake, new TrackedSubscriptions([subscription]));
      const trackerOther = new EventCounterTracker(other.intake, new TrackedSubscriptions([subscription]));
      await trackerOne.observe(eventNotification(subscription, [1]));
      // Events 2..41 each delivered to both replicas at the same moment.
      const observations = await Promise.all(
        Array.from({ length: 40 }, (_, index) => index + 2).flatMap((number) => [
          trackerOne.observeMany([eventNotification(subscription, [number])]),
          trackerOther.observe(eventNotification(subscription, [number])),
        ]),
      );
      const fresh = observations
        .flat()
        .flatMap((observation) => observation.fresh.map((event) => event.eventNumber));
      expect(fresh.sort((left, right) => Number(left) - Number(right))).toEqual(
        Array.from({ length: 40 }, (_, index) => index + 2),
      );
      expect(observations.flat().reduce((total, observation) => total + observation.duplicates, 0)).toBe(40);
      expect((await other.intake.subscription(subscription))?.highest).toBe(41);

      // A gap seen through one replica is missing for the other, and filled through it.
      const gap = await trackerOne.observe(eventNotification(subscription, [45]));
      expect(gap.gap).toEqual([42, 43, 44]);
      expect(await other.intake.missingCount(subscription)).toBe(3);
      expect((await trackerOther.observe(eventNotification(subscription, [43], 45))).filled).toBe(1);
      expect((await one.intake.missingOlderThan(Date.now())).map((missing) => missing.eventNumber)).toEqual([
        42, 44,
      ]);
    });

    it('intake state: one polling cursor, set once at start, advanced by one holder at a time', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      await one.intake.initialiseCursor('Encounter', '2026-12-01T00:00:00.000Z');
      await other.intake.initialiseCursor('Encounter', '2026-12-02T00:00:00.000Z');
      expect(await other.intake.cursor('Encounter')).toBe('2026-12-01T00:00:00.000Z');
      expect(await one.intake.markPolled('enc-1', '1', '2026-12-01T00:00:00.000Z')).toBe(true);
      expect(await other.intake.markPolled('enc-1', '1', '2026-12-01T00:00:00.000Z')).toBe(false);

      // Read, think (a FHIR search), write: interleaved holders would each advance from the same cursor.
      let inside = 0;
      let overlapped = false;
      const advance = (store: IntakeStateStore) =>
        store.exclusive('poll-cursor', async () => {
          inside += 1;
          if (inside > 1) overlapped = true;
          const cursor = Date.parse((await store.cursor('Encounter')) as string);
          await new Promise((resolve) => setTimeout(resolve, 15));
          await store.saveCursor('Encounter', new Date(cursor + 60_000).toISOString());
          inside -= 1;
        });
      await Promise.all(
        Array.from({ length: 6 }, (_, index) => advance(index % 2 ? one.intake : other.intake)),
      );
      expect(overlapped).toBe(false);
      expect(await one.intake.cursor('Encounter')).toBe('2026-12-01T00:06:00.000Z');
    });

    it('nudges: deliveries once, suppression and statistics identical from every replica', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      const delivery = {
        nudgeId: 'n1',
        ruleId: 'colorectal-screening',
        ruleVersion: '1',
        patientId: 'p1',
        occasionId: 'enc-1',
        deliveredAt: new Date('2026-12-01T10:00:00Z'),
      };
      await Promise.all([one.nudges.recordDelivery(delivery), other.nudges.recordDelivery(delivery)]);
      await other.nudges.recordDelivery({ ...delivery, nudgeId: 'n2', occasionId: 'enc-2', silent: true });
      expect((await other.nudges.lastDelivery('colorectal-screening', 'p1'))?.nudgeId).toBe('n1');
      expect(await one.nudges.lastDelivery('colorectal-screening', 'p1', 'enc-1')).toBeUndefined();
      expect((await one.nudges.findDelivery('n2'))?.silent).toBe(true);
      expect((await other.nudges.deliveriesForOccasion('p1', 'enc-1')).map((found) => found.nudgeId)).toEqual(
        ['n1'],
      );
      await one.nudges.recordOutcome({
        nudgeId: 'n1',
        outcome: 'overridden',
        reason: 'patient declined',
        source: 'review-app',
        recordedAt: new Date('2026-12-01T11:00:00Z'),
      });
      // An older outcome arriving late does not replace the newer one.
      await other.nudges.recordOutcome({
        nudgeId: 'n1',
        outcome: 'accepted',
        source: 'cds-hooks',
        recordedAt: new Date('2026-12-01T10:30:00Z'),
      });
      const statistics = await one.nudges.statistics();
      expect(statistics).toEqual(await other.nudges.statistics());
      expect(statistics).toEqual([
        expect.objectContaining({
          ruleId: 'colorectal-screening',
          fired: 1,
          overridden: 1,
          silent: 1,
          overrideReasons: { 'patient declined': 1 },
        }),
      ]);
      await one.nudges.recordSnooze({
        ruleId: 'colorectal-screening',
        patientId: 'p1',
        until: new Date('2026-12-31T00:00:00Z'),
        nudgeId: 'n1',
        recordedAt: new Date('2026-12-01T11:00:00Z'),
      });
      expect(
        (
          await other.nudges.snoozedUntil('colorectal-screening', 'p1', new Date('2026-12-10T00:00:00Z'))
        )?.toISOString(),
      ).toBe('2026-12-31T00:00:00.000Z');
      expect(
        await other.nudges.snoozedUntil('colorectal-screening', 'p1', new Date('2027-01-10T00:00:00Z')),
      ).toBe(undefined);
      const logic = { ruleId: 'r', ruleVersion: '1', logicFingerprint: 'a', firstServedAt: new Date(0) };
      await one.nudges.recordRuleLogic([logic]);
      await other.nudges.recordRuleLogic([{ ...logic, logicFingerprint: 'b' }]);
      expect(await other.nudges.ruleLogicConflicts([{ ...logic, logicFingerprint: 'b' }])).toEqual([logic]);
    });

    it('rate limits: replicas draw on one budget per client, refilled with time', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      const now = Date.parse('2026-12-01T10:00:00Z');
      const take = (store: IntakeStateStore, client: string, at = now) =>
        store.takeToken('notify-unauthenticated', client, 3, at);
      expect((await take(one.intake, '10.0.0.1')).allowed).toBe(true);
      expect((await take(other.intake, '10.0.0.1')).allowed).toBe(true);
      expect((await take(one.intake, '10.0.0.1')).allowed).toBe(true);
      const refused = await take(other.intake, '10.0.0.1');
      expect(refused).toEqual({ allowed: false, retryAfterSeconds: 20 });
      // Another client, another bucket; the refused one has a token again 20 s later, and only one.
      expect((await take(other.intake, '10.0.0.2')).allowed).toBe(true);
      expect((await take(one.intake, '10.0.0.1', now + 20_000)).allowed).toBe(true);
      expect((await take(other.intake, '10.0.0.1', now + 20_000)).allowed).toBe(false);
    });

    it('drafted nudges: what one replica drafted is served by the other, never for another patient', async () => {
      const open = await storage();
      const [one, other] = [await open(), await open()];
      await one.drafted.remember('p1', 'enc-1', evaluation('n1', 'p1'));
      expect((await other.drafted.find({ patientId: 'p1', encounterId: 'enc-1' }))?.nudges[0]?.id).toBe('n1');
      expect((await other.drafted.find({ patientId: 'p1' }))?.nudges[0]?.id).toBe('n1');
      expect(await other.drafted.find({ patientId: 'p2', encounterId: 'enc-1' })).toBeUndefined();
    });
  });
}
