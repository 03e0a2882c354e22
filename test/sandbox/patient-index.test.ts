import { parseSearchRequest } from '@medplum/core';
import { MemoryRepository } from '@medplum/fhir-router';
import type { Resource } from '@medplum/fhirtypes';
import { beforeAll, describe, expect, it, vi } from 'vitest';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../../src/sandbox/synthetic-patients.ts';

/** The indexed patient search must answer exactly what Medplum's full scan answers, order included. */
describe('patient-indexed search', () => {
  let sandbox: SandboxEhr;
  const queries = [
    'Observation?patient=Patient/sbx-0000&code=http://loinc.org|4548-4&_sort=-date&_count=5&_offset=2',
    'Observation?patient=Patient/sbx-0003&_count=500',
    'DocumentReference?patient=Patient/sbx-0000&_sort=-date&_count=10',
    'DocumentReference?patient=Patient/sbx-0000&_sort=-_lastUpdated',
    'Encounter?patient=Patient/sbx-0001&status=planned',
    'Encounter?patient=Patient/sbx-0000&date=ge2026-01-01&_sort=date',
    'Condition?patient=Patient/sbx-0000&clinical-status=active',
    'MedicationRequest?patient=Patient/sbx-0005&status=active',
    'AllergyIntolerance?patient=Patient/sbx-0002',
    'Immunization?patient=Patient/sbx-0008&_sort=-date',
    'DocumentReference?patient=Patient/nobody',
  ];

  beforeAll(async () => {
    sandbox = createSandboxEhr();
    const patients = generatePatients({ count: 12, seed: 3, now: new Date('2026-11-27T00:00:00Z') });
    await sandbox.seed(patients.flatMap((patient) => patient.resources));
    // Updates and deletes must keep the index right: move one observation, delete another.
    const observation = (await sandbox.repository.readResource(
      'Observation',
      'sbx-0003-obs-0001',
    )) as Resource & {
      subject: { reference: string };
    };
    await sandbox.repository.updateResource({
      ...observation,
      subject: { reference: 'Patient/sbx-0001' },
    } as Resource);
    await sandbox.repository.deleteResource('Observation', 'sbx-0003-obs-0002');
    const encounter = await sandbox.repository.readResource('Encounter', 'sbx-0000-enc-0003');
    await sandbox.repository.updateResource({ ...encounter, status: 'cancelled' } as Resource);
  });

  it.each(queries)('%s', async (query) => {
    const indexed = await sandbox.repository.search(parseSearchRequest(query));
    const scanned = await MemoryRepository.prototype.search.call(
      sandbox.repository,
      parseSearchRequest(query),
    );
    expect(indexed.total).toBe(scanned.total);
    expect(indexed.entry?.map((entry) => entry.resource?.id)).toEqual(
      scanned.entry?.map((entry) => entry.resource?.id),
    );
  });

  it('answers patient searches without the full scan, and other searches with it', async () => {
    const fullScan = vi.spyOn(MemoryRepository.prototype, 'search');
    try {
      await sandbox.repository.search(parseSearchRequest('Observation?patient=Patient/sbx-0000&code=4548-4'));
      expect(fullScan).not.toHaveBeenCalled();
      await sandbox.repository.search(parseSearchRequest('Observation?code=4548-4'));
      expect(fullScan).toHaveBeenCalledTimes(1);
    } finally {
      fullScan.mockRestore();
    }
  });

  it('follows updates and deletes', async () => {
    const moved = await sandbox.repository.search(
      parseSearchRequest('Observation?patient=Patient/sbx-0001&_count=1000'),
    );
    expect(moved.entry?.map((entry) => entry.resource?.id)).toContain('sbx-0003-obs-0001');
    const left = await sandbox.repository.search(
      parseSearchRequest('Observation?patient=Patient/sbx-0003&_count=1000'),
    );
    const ids = left.entry?.map((entry) => entry.resource?.id);
    expect(ids).not.toContain('sbx-0003-obs-0001');
    expect(ids).not.toContain('sbx-0003-obs-0002');
  });
});
