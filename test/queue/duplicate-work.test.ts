import { afterAll, afterEach, describe, expect, it } from 'vitest';
import { medplumSignature } from '../../src/intake/medplum-signature.ts';
import { seedEncounters } from '../support/fhir-stand-in.ts';
import {
  draftsByEncounter,
  type IntakeHarness,
  startIntakeHarness,
  waitFor,
} from '../support/intake-harness.ts';
import { createTestDatabase, postgresAvailable } from '../support/postgres-database.ts';

/**
 * Two subscriptions announcing the same encounter version (a HAPI-style rest-hook and a Medplum one),
 * the second while the first job is still retrieving: the service runs two jobs but only one full
 * retrieval, because the second job is not handed out until the first has finished, and then finds the
 * work done. Counted at the FHIR stand-in, with two workers free to run side by side.
 */
let harness: IntakeHarness | undefined;
afterEach(async () => {
  await harness?.close();
  harness = undefined;
});

/** The patient-wide searches of a history retrieval (the Encounter read alone is not one). */
function retrievalSearches(requests: string[]): string[] {
  return requests.filter((request) => /^GET \/[A-Za-z]+\?(?:.*&)?(?:patient|subject)=/.test(request));
}

const queues: [string, boolean, () => Record<string, unknown>][] = [
  ['SQLite', true, () => ({})],
  [
    'PostgreSQL (pg-boss)',
    postgresAvailable,
    () => {
      const database = createTestDatabase();
      databases.push(database);
      return { adapter: 'postgres', postgresUrl: database.url };
    },
  ],
];
const databases: { drop(): void }[] = [];
afterAll(() => {
  for (const database of databases) database.drop();
});

describe.each(queues)('duplicate work: %s queue', (_name, available, queueSettings) => {
  it.skipIf(!available)(
    'two notifications of one version via two sources make exactly one full retrieval and one draft',
    async () => {
      const secret = 'medplum-secret-0123456789';
      harness = await startIntakeHarness(
        {
          intake: { medplumSecrets: { 'medplum-sub': secret } },
          queue: { ...queueSettings(), concurrency: 2 },
        },
        // Slow enough that the first job is still retrieving when the second notification arrives.
        { latencyMs: 40 },
      );
      const current = harness;
      const [id] = seedEncounters(current.standIn, 1);
      const encounter = current.standIn.get('Encounter', id);

      expect((await current.post(`/notify/Encounter/${id}`, encounter, {}, 'PUT')).status).toBe(200);
      await waitFor(
        () => current.standIn.requests.includes(`GET /Encounter/${id}`),
        'the first job to read the encounter',
      );
      expect((await current.service.queue.counts()).running).toBe(1);

      const body = JSON.stringify(encounter);
      const medplum = await current.post('/notify', body, {
        authorization: '',
        'x-signature': medplumSignature(Buffer.from(body), secret),
        'x-medplum-subscription': 'medplum-sub',
        'x-medplum-interaction': 'update',
      });
      expect(medplum.status).toBe(200);

      await waitFor(async () => (await current.service.queue.counts()).done === 2, 'both jobs to finish');
      const outcomes = (await current.service.queue.list('done')).map((job) => job.outcome).sort();
      expect(outcomes).toEqual(['draft-created', 'skipped:already-done']);
      const searches = retrievalSearches(current.standIn.requests);
      expect(searches.length).toBeGreaterThan(0);
      // Each search of the retrieval made once: a second concurrent job would have repeated them all.
      expect(searches.length).toBe(new Set(searches).size);
      expect(current.standIn.requests.filter((request) => request === `GET /Encounter/${id}`)).toHaveLength(
        2,
      );
      expect(draftsByEncounter(current.standIn).get(id)).toBe(1);
      expect((await current.service.queue.counts()).failed).toBe(0);
    },
  );
});
