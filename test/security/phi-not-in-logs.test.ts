import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { Writable } from 'node:stream';
import type { DocumentReference, Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { readNoteText } from '../../fhir/note-text.ts';
import { loadConfig } from '../../src/config/load-config.ts';
import { createLogger } from '../../src/log.ts';
import { type RunningService, startService } from '../../src/service.ts';
import {
  draftsFor,
  finishedEncounter,
  idOnlyNotification,
  postNotification,
  waitForIdleQueue,
} from '../integration/service-harness.ts';

/**
 * Issue 10, section 5: "logs never contain names, birth dates, identifiers or note text", tested.
 * The real service runs on its sandbox EHR with a logger at debug level writing into memory; events
 * arrive both ways (the sandbox's own subscription and a posted notification), drafts are written,
 * edited, signed and rejected, a CDS Hooks service reads a record, and the operator API lists the jobs. Then every patient's names,
 * birth date, identifiers and note sentences are looked for in everything logged.
 */

const patientIds = ['sbx-0000', 'sbx-0001', 'sbx-0002'];

interface PatientData {
  label: string;
  value: string;
}

function sentencesOf(text: string): string[] {
  return text
    .split(/(?<=[.!?])\s+|\n+/)
    .map((sentence) => sentence.trim())
    .filter((sentence) => sentence.length >= 25);
}

function escapeForRegex(text: string): string {
  return text.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/** Everything about the sandbox's patients that must never be logged. */
async function patientData(fhir: FhirClient): Promise<PatientData[]> {
  const data: PatientData[] = [];
  for (const patientId of patientIds) {
    const patient = await fhir.read<Patient>('Patient', patientId);
    for (const name of patient.name ?? []) {
      for (const part of [...(name.given ?? []), name.family, name.text]) {
        if (part && part.length >= 3) data.push({ label: `name of ${patientId}`, value: part });
      }
    }
    if (patient.birthDate) data.push({ label: `birth date of ${patientId}`, value: patient.birthDate });
    for (const identifier of patient.identifier ?? []) {
      // Resource ids may be logged; an identifier spelled exactly like one would be no leak.
      if (identifier.value && identifier.value !== patientId)
        data.push({ label: `identifier of ${patientId}`, value: identifier.value });
    }
    const notes = await fhir.search<DocumentReference>('DocumentReference', {
      patient: `Patient/${patientId}`,
      _count: 200,
    });
    for (const note of notes) {
      for (const identifier of note.identifier ?? []) {
        if (identifier.value && identifier.value !== note.id)
          data.push({ label: `identifier of DocumentReference/${note.id}`, value: identifier.value });
      }
      const text = await readNoteText(fhir, note).catch(() => undefined);
      for (const sentence of sentencesOf(text ?? ''))
        data.push({ label: `note sentence of DocumentReference/${note.id}`, value: sentence });
    }
  }
  return data;
}

describe('no patient data in the logs, at debug level, through the whole sandbox pipeline', () => {
  const logged: string[] = [];
  let service: RunningService;
  let fhir: FhirClient;

  beforeAll(async () => {
    const dataDir = mkdtempSync(path.join(tmpdir(), 'phi-logs-test-'));
    const config = loadConfig({
      env: {
        PORT: '0',
        DATA_DIR: dataDir,
        EHR_AGENT_SANDBOX__PATIENTS: String(patientIds.length),
        EHR_AGENT_QUEUE__POLL_INTERVAL_MS: '50',
        EHR_AGENT_QUEUE__BACKOFF_BASE_MS: '50',
      },
      cwd: dataDir,
    });
    const destination = new Writable({
      write(chunk, _encoding, done) {
        logged.push(String(chunk));
        done();
      },
    });
    const logger = createLogger({ level: 'debug', destination });
    expect(logger.isLevelEnabled('debug')).toBe(true);
    service = await startService(config, logger);
    fhir = new FhirClient({ baseUrl: service.fhirBaseUrl });
  });
  afterAll(async () => {
    await service?.close();
  });

  it('logs ids and counts from notification to sign-off, and nothing that names or describes a patient', {
    timeout: 150_000,
  }, async () => {
    // A planned visit announced by a posted notification: a pre-visit briefing.
    const planned = { ...finishedEncounter('sbx-0002', 'phi-planned-1'), status: 'planned' as const };
    // Another patient's visit, whose draft is rejected.
    const third = finishedEncounter('sbx-0000', 'phi-visit-3');
    await service.sandbox!.seed([planned, third]);
    for (const [eventNumber, encounter] of [planned, third].entries()) {
      const response = await postNotification(
        service,
        idOnlyNotification(service.fhirBaseUrl, encounter.id!, eventNumber + 1),
      );
      expect(response.status).toBe(200);
    }
    // An encounter finished through the FHIR API once the service's subscription is active: the
    // sandbox's own subscription notifies the service.
    const activeBy = Date.now() + 30_000;
    while ((await fhir.search('Subscription', { status: 'active' })).length === 0 && Date.now() < activeBy)
      await new Promise((resolve) => setTimeout(resolve, 100));
    const { resource: finished } = await fhir.create({
      ...finishedEncounter('sbx-0001', 'ignored'),
      id: undefined,
      meta: undefined,
    });

    const deadline = Date.now() + 60_000;
    let finishedDrafts = await draftsFor(fhir, finished.id!);
    while (finishedDrafts.length === 0 && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 200));
      finishedDrafts = await draftsFor(fhir, finished.id!);
    }
    await waitForIdleQueue(service);
    const [summary] = finishedDrafts;
    const [briefing] = await draftsFor(fhir, planned.id!);
    const [thirdDraft] = await draftsFor(fhir, third.id!);
    expect(summary?.docStatus).toBe('preliminary');
    expect(briefing?.docStatus).toBe('preliminary');
    expect(thirdDraft?.docStatus).toBe('preliminary');

    // Review: read, edit, sign one; sign another as written; reject the third.
    const lifecycle = service.draftLifecycle;
    const view = await lifecycle.getDraft(summary.id!);
    expect(view).toBeDefined();
    const summaryText = Buffer.from(summary.content[0].attachment.data!, 'base64').toString('utf8');
    await lifecycle.editDraft(summary.id!, `${summaryText}\nReviewed with the patient.`, {
      practitioner: 'Practitioner/phi-reviewer',
    });
    await lifecycle.signDraft(summary.id!, { practitioner: 'Practitioner/phi-reviewer' });
    await lifecycle.signDraft(briefing.id!, { practitioner: 'Practitioner/phi-reviewer' });
    await lifecycle.rejectDraft(thirdDraft.id!, {
      practitioner: 'Practitioner/phi-reviewer',
      reason: 'Not this visit',
    });
    // CDS Hooks read the same records (cards carry the patient's age and conditions).
    const patientView = await fetch(`${service.url}/cds-services/guideline-nudges-patient-view`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({
        hook: 'patient-view',
        hookInstance: 'phi-logs-1',
        context: { patientId: 'sbx-0001', userId: 'Practitioner/phi-reviewer' },
      }),
    });
    expect(patientView.status).toBe(200);
    const jobs = await fetch(`${service.url}/api/jobs?status=done`, {
      headers: { Authorization: `Bearer ${service.adminSecret}` },
    });
    expect(jobs.status).toBe(200);
    await waitForIdleQueue(service);

    const log = logged.join('');
    // The capture saw the pipeline at debug level: the test would be empty otherwise.
    expect(log).toContain('draft-written');
    expect(logged.length).toBeGreaterThan(5);

    const data = await patientData(fhir);
    expect(data.filter((item) => item.label.startsWith('name')).length).toBeGreaterThanOrEqual(6);
    expect(data.filter((item) => item.label.startsWith('birth date'))).toHaveLength(3);
    expect(data.filter((item) => item.label.startsWith('identifier of sbx')).length).toBeGreaterThanOrEqual(
      3,
    );
    expect(data.filter((item) => item.label.startsWith('note sentence')).length).toBeGreaterThan(20);
    const found = data.filter((item) =>
      // Names as whole words (a short given name may be part of an ordinary word); the rest as written.
      item.label.startsWith('name')
        ? new RegExp(`\\b${escapeForRegex(item.value)}\\b`).test(log)
        : log.includes(item.value),
    );
    expect(found.map((item) => `${item.label}: ${item.value.slice(0, 60)}`)).toEqual([]);
  });
});
