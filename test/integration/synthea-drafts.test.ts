import path from 'node:path';
import type { Encounter, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { decodeBase64Text } from '../../fhir/note-text.ts';
import { encounterAfterDeath } from '../../fhir/patient-death.ts';
import { loadNdjsonFolder } from '../../src/sandbox/load-ndjson.ts';
import type { RunningService } from '../../src/service.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import {
  draftsFor,
  idOnlyNotification,
  postNotification,
  startSandboxService,
  waitForIdleQueue,
} from './service-harness.ts';

/** Real Synthea output (../shared/fixtures/synthea-r4) loaded into the sandbox: a draft for every patient. */
describe.skipIf(!sharedFixtures)('drafts for real Synthea patients', () => {
  let service: RunningService;
  let fhir: FhirClient;
  let patientIds: string[] = [];

  beforeAll(async () => {
    // Synthea's visits are years old: drafts.maxAgeDays (14 by default) would skip them all (test/drafts/too-old.test.ts).
    ({ service, fhir } = await startSandboxService({
      EHR_AGENT_SANDBOX__PATIENTS: '1',
      EHR_AGENT_DRAFTS__MAX_AGE_DAYS: '0',
    }));
    const loaded = await loadNdjsonFolder(
      service.sandbox!,
      path.join(sharedFixtures as string, 'synthea-r4'),
    );
    patientIds = loaded.patientIds;
  }, 120_000);
  afterAll(async () => {
    await service?.close();
  });

  it('writes one cited draft for the latest finished encounter of each patient (before death)', async () => {
    expect(patientIds.length).toBe(9);
    const latestEncounter = new Map<string, Encounter>();
    for (const patientId of patientIds) {
      const patient = await fhir.read<Patient>('Patient', patientId);
      const encounters = await fhir.search<Encounter>('Encounter', {
        patient: `Patient/${patientId}`,
        status: 'finished',
      });
      // One patient died in 1989; the encounter after the death (its certification) is drafted for no one.
      const latest = encounters
        .filter((encounter) => !encounterAfterDeath(patient, encounter))
        .sort((left, right) => (right.period?.start ?? '').localeCompare(left.period?.start ?? ''))[0];
      expect(latest, `Patient/${patientId} has a finished encounter`).toBeDefined();
      latestEncounter.set(patientId, latest);
    }
    let eventNumber = 0;
    for (const encounter of latestEncounter.values()) {
      const response = await postNotification(
        service,
        idOnlyNotification(service.fhirBaseUrl, encounter.id!, ++eventNumber),
      );
      expect(response.status).toBe(200);
    }
    await waitForIdleQueue(service, 240_000);
    expect((await service.queue.counts()).failed).toBe(0);

    for (const [patientId, encounter] of latestEncounter) {
      const drafts = await draftsFor(fhir, encounter.id!);
      expect(drafts, `one draft for Patient/${patientId}`).toHaveLength(1);
      const text = decodeBase64Text(drafts[0].content[0].attachment.data!, 'text/plain; charset=utf-8');
      const citations = citationsIn(text);
      expect(citations).toContain(`Encounter/${encounter.id}`);
      // Synthea's notes (`# Assessment and Plan` / `## Plan` in markdown) are summarised: each patient has some.
      const noteSection = text.split('Latest notes: assessment and plan:')[1]?.split('\n\n')[0] ?? '';
      expect(noteSection, `Patient/${patientId}'s notes summarised`).toMatch(
        /^\n- .+\[DocumentReference\/[^\]]+\]/,
      );
      // Every line that states a fact carries a citation (the verifier's contract).
      for (const line of text.split('\n').filter((candidate) => candidate.startsWith('- '))) {
        expect(citationsIn(line).length, line.slice(0, 60)).toBeGreaterThan(0);
      }
    }
  }, 300_000);
});
