import { historyResourceTypes } from '../fhir/patient-record.ts';
import { createSandboxEhr } from '../src/sandbox/sandbox-ehr.ts';
import { generatePatients } from '../src/sandbox/synthetic-patients.ts';

/**
 * The sandbox EHR and its generator: how fast a 1,000-patient population is made (against a plain
 * structured clone of the same data, the floor for producing that many objects), how long seeding takes,
 * and what one patient's history retrieval costs through the FHIR API on the default 12-patient
 * sandbox (the baseline) against the 1,000-patient one (search scans every resource of a type).
 */
const historyTypes = historyResourceTypes;

function percentile(values: number[], share: number): number {
  const sorted = [...values].sort((left, right) => left - right);
  return sorted[Math.min(sorted.length - 1, Math.floor(share * sorted.length))];
}

const round = (value: number) => Number(value.toFixed(1));

async function retrievalTimes(patientCount: number, sampled: number) {
  const sandbox = createSandboxEhr({ baseUrl: 'http://bench.invalid/fhir' });
  const patients = generatePatients({
    count: patientCount,
    seed: 1,
    maxNotesPerPatient: patientCount > 100 ? 5 : undefined,
  });
  const seedStart = performance.now();
  await sandbox.seed(patients.flatMap((patient) => patient.resources));
  const seedMs = performance.now() - seedStart;
  const times: number[] = [];
  // Patient 0 has hundreds of notes: skip it here so both populations retrieve comparable patients.
  for (let index = 1; index <= sampled; index++) {
    const patientId = patients[index % patients.length].patientId;
    const start = performance.now();
    await sandbox.handle({ method: 'GET', url: `Patient/${patientId}` });
    for (const type of historyTypes) {
      let url: string | undefined = `${type}?patient=${patientId}&_count=200`;
      while (url) {
        const response = await sandbox.handle({ method: 'GET', url });
        const next = (response.body as { link?: { relation: string; url: string }[] }).link?.find(
          (link) => link.relation === 'next',
        );
        url = next?.url.replace('http://bench.invalid/fhir/', '');
      }
    }
    times.push(performance.now() - start);
  }
  const resources = patients.reduce((sum, patient) => sum + patient.resources.length, 0);
  await sandbox.close();
  return { seedMs, times, resources };
}

export async function run(): Promise<Record<string, unknown>> {
  const now = new Date('2026-11-27T00:00:00Z');
  const generateStart = performance.now();
  const population = generatePatients({ count: 1000, seed: 7, now, maxNotesPerPatient: 5 });
  const generateMs = performance.now() - generateStart;
  const cloneStart = performance.now();
  structuredClone(population);
  const cloneMs = performance.now() - cloneStart;
  const resources = population.reduce((sum, patient) => sum + patient.resources.length, 0);

  const longStart = performance.now();
  const longHistory = generatePatients({ count: 1, seed: 7, now })[0];
  const longHistoryMs = performance.now() - longStart;

  const small = await retrievalTimes(12, 11);
  const large = await retrievalTimes(1000, 11);
  return {
    generate1000PatientsMs: round(generateMs),
    baselineStructuredCloneMs: round(cloneMs),
    generatedResources: resources,
    longHistoryPatient: {
      notes: longHistory.resources.filter((resource) => resource.resourceType === 'DocumentReference').length,
      generateMs: round(longHistoryMs),
    },
    seed: {
      patients12: { resources: small.resources, ms: round(small.seedMs) },
      patients1000: { resources: large.resources, ms: round(large.seedMs) },
    },
    historyRetrievalPerPatientMs: {
      baseline12Patients: {
        median: round(percentile(small.times, 0.5)),
        p99: round(percentile(small.times, 0.99)),
      },
      patients1000: {
        median: round(percentile(large.times, 0.5)),
        p99: round(percentile(large.times, 0.99)),
      },
    },
    heapUsedMb: Math.round(process.memoryUsage().heapUsed / 1024 / 1024),
  };
}
