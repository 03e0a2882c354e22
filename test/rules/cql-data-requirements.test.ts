import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import express from 'express';
import type { Bundle, Encounter, FhirResource } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import { retrievePatientRecord } from '../../fhir/patient-history.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { createCdsHooksRouter } from '../../src/http/cds-hooks.ts';
import { silentLogger } from '../../src/log.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import { evaluateRules } from '../../src/rules/evaluate.ts';
import { InMemoryNudgeStore } from '../../src/rules/nudge-store.ts';
import { recordFromResources } from '../../src/rules/record-from-bundle.ts';
import { loadRuleSet } from '../../src/rules/rule-loader.ts';
import type { RuleSet } from '../../src/rules/rule-set.ts';
import { createSandboxEhr, type SandboxEhr } from '../../src/sandbox/sandbox-ehr.ts';
import { cqlModelDirectory, haveCqlModels } from '../support/cql-models.ts';
import { ruleFolder, runRulesCli, serveSandbox, valueSetBase } from './helpers.ts';

/**
 * Issue 13.2: a CQL library is given every type it retrieves. The CDS Connect Pain Management Summary
 * reads MedicationStatement and ServiceRequest, which the standard history does not load; a patient
 * whose only evidence is a MedicationStatement must meet the inclusion criteria in fixture tests,
 * explain, backtests, the pipeline and CDS Hooks alike.
 */
const haveModels = haveCqlModels;

const commons = `library PainCommons version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
context Patient
define "Active Referrals": [ServiceRequest] R where R.status = 'active'
`;

const summary = `library PainSummary version '1.0.0'
using FHIR version '4.0.1'
include FHIRHelpers version '4.0.1' called FHIRHelpers
include PainCommons version '1.0.0' called Commons
valueset "Opioid analgesics": '${valueSetBase}/opioid-analgesics'
context Patient
define "Opioid Statements": [MedicationStatement: "Opioid analgesics"] S where S.status = 'active'
define "Opioid Orders": [MedicationRequest: "Opioid analgesics"] R where R.status = 'active'
define "MeetsInclusionCriteria":
  exists "Opioid Statements" or exists "Opioid Orders" or exists Commons."Active Referrals"
`;

const rule = `id: pain-summary
version: 1.0.0
title: Pain management review
trigger: [encounter-planned, patient-view]
severity: info
guideline:
  label: CDS Connect Pain Management Summary (stand-in)
  url: https://cds.ahrq.gov/cdsconnect/artifact/factors-consider-managing-chronic-pain-fhir-based-clinical-decision-support
  recommendation: Review the pain management summary.
condition:
  criteria:
    - id: on-opioids
      description: Takes an opioid (statement or order) or has an active referral
      cql:
        library: PainSummary
        expression: MeetsInclusionCriteria
suggestedAction: Review the pain management summary.
tests:
  - fixture: fixtures/statement-only.json
    expect: fires
    now: 2026-03-01
`;

const patientId = 'pain-1';
const subject = { reference: `Patient/${patientId}` };
const statementOnly: FhirResource[] = [
  { resourceType: 'Patient', id: patientId, birthDate: '1970-05-01', gender: 'female' },
  {
    resourceType: 'Encounter',
    id: 'pain-1-visit',
    status: 'planned',
    class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
    subject,
    period: { start: '2026-03-02T09:00:00Z' },
  },
  {
    resourceType: 'MedicationStatement',
    id: 'pain-1-oxycodone',
    status: 'active',
    medicationCodeableConcept: {
      coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '1049621' }],
    },
    subject,
    effectiveDateTime: '2026-01-15',
  },
];
/** The same evidence, with the drug as a referenced Medication (how many EHRs export it). */
const referencedMedication: FhirResource[] = [
  { resourceType: 'Patient', id: 'pain-2', birthDate: '1968-02-01', gender: 'male' },
  {
    resourceType: 'Medication',
    id: 'oxycodone-5',
    code: { coding: [{ system: 'http://www.nlm.nih.gov/research/umls/rxnorm', code: '1049621' }] },
  },
  {
    resourceType: 'MedicationStatement',
    id: 'pain-2-oxycodone',
    status: 'active',
    medicationReference: { reference: 'Medication/oxycodone-5' },
    subject: { reference: 'Patient/pain-2' },
    effectiveDateTime: '2026-01-15',
  },
];
const bundle: Bundle = {
  resourceType: 'Bundle',
  type: 'collection',
  entry: statementOnly.map((resource) => ({ resource })),
};

function painFolder(files: Record<string, string> = {}) {
  return {
    ...ruleFolder({
      'pain-summary.yaml': rule,
      'cql/PainSummary.cql': summary,
      'cql/PainCommons.cql': commons,
      'fixtures/statement-only.json': JSON.stringify(bundle),
      ...files,
    }),
    cqlModelDirectory,
  };
}

let painRuleSet: Promise<RuleSet> | undefined;
/** Compiling CQL takes seconds: the tests share one load of the pain folder. */
function loaded(): Promise<RuleSet> {
  painRuleSet ??= loadRuleSet(painFolder()).then((result) => {
    if (!result.ok) throw new Error(JSON.stringify(result.errors));
    return result.ruleSet;
  });
  return painRuleSet;
}

const now = new Date('2026-03-01T00:00:00Z');

describe.skipIf(!haveModels)('CQL data requirements', () => {
  let sandbox: SandboxEhr;
  let server: Server;
  let baseUrl: string;
  const source = painFolder();

  beforeAll(async () => {
    sandbox = createSandboxEhr();
    await sandbox.seed([...statementOnly, ...referencedMedication]);
    ({ server, baseUrl } = await serveSandbox(sandbox));
  });
  afterAll(async () => {
    server?.close();
    await sandbox?.close();
  });

  it('computes every retrieved type from the ELM, through included libraries', async () => {
    const ruleSet = await loaded();
    // The translator looks through Medication for a code filter on `medication` (a choice with a reference).
    expect(ruleSet.rules[0].dataRequirements).toEqual([
      'Medication',
      'MedicationRequest',
      'MedicationStatement',
      'Patient',
      'ServiceRequest',
    ]);
    expect(ruleSet.additionalResourceTypes).toEqual(['Medication', 'MedicationStatement', 'ServiceRequest']);
  });

  it('fires for a patient whose only evidence is a MedicationStatement: fixture test and in-memory record', async () => {
    const ruleSet = await loaded();
    const evaluation = await evaluateRules(ruleSet, recordFromResources(statementOnly), {
      trigger: 'encounter-planned',
      now,
    });
    expect(evaluation.results[0].status).toBe('fired');
    expect(evaluation.nudges[0].evidence).toEqual(['Patient/pain-1']);

    const tested = await runRulesCli([
      '--rules',
      source.directory,
      '--value-sets',
      source.valueSetFile ?? '',
      '--cql-models',
      cqlModelDirectory,
      'test',
    ]);
    expect(tested.out).toContain('PASS  pain-summary  fixtures/statement-only.json (fires)');
    expect(tested.exitCode).toBe(0);
  });

  it('loads the types the rules read from a FHIR server: retrieval, explain --fhir and backtest --source', async () => {
    const ruleSet = await loaded();
    const record = await retrievePatientRecord(new FhirClient({ baseUrl }), statementOnly[1] as Encounter, {
      draftIdentifierSystem: 'urn:test:draft',
      additionalTypes: ruleSet.additionalResourceTypes,
    });
    expect(record.additional?.map((resource) => `${resource.resourceType}/${resource.id}`)).toEqual([
      'MedicationStatement/pain-1-oxycodone',
    ]);

    const common = [
      '--rules',
      source.directory,
      '--value-sets',
      source.valueSetFile ?? '',
      '--cql-models',
      cqlModelDirectory,
    ];
    const explained = await runRulesCli([
      ...common,
      'explain',
      'pain-summary',
      patientId,
      '--fhir',
      baseUrl,
      '--now',
      now.toISOString(),
    ]);
    expect(explained.out).toContain('=> FIRED');
    const throughReference = await runRulesCli([
      ...common,
      'explain',
      'pain-summary',
      'pain-2',
      '--fhir',
      baseUrl,
      '--now',
      now.toISOString(),
    ]);
    expect(throughReference.out).toContain('=> FIRED');
    const backtest = await runRulesCli([
      ...common,
      'backtest',
      '--source',
      baseUrl,
      '--patients',
      '2',
      '--now',
      now.toISOString(),
      '--workers',
      '1',
    ]);
    expect(backtest.exitCode, backtest.err).toBe(0);
    expect(backtest.out).toMatch(/pain-summary\s+1\.0\.0\s+2\s+100\.0%/);
  });

  it('the pipeline retrieves them for the rules before selecting nudges', async () => {
    const ruleSet = await loaded();
    const seen: PatientRecord[] = [];
    const fhir = new FhirClient({ baseUrl });
    await processEncounterJob(
      {
        id: 'job-1',
        encounterId: 'pain-1-visit',
        source: 'test',
        kind: 'previsit-briefing',
        status: 'running',
        attempts: 1,
        createdAt: now.toISOString(),
        runAt: now.toISOString(),
      },
      {
        fhir,
        engine: createExtractiveEngine(),
        writer: new DraftNoteWriter(fhir, 'urn:test:draft'),
        triggers: { planned: 'previsit-briefing' },
        draftIdentifierSystem: 'urn:test:draft',
        logger: silentLogger(),
        additionalHistoryTypes: () => ruleSet.additionalResourceTypes,
        selectNudges: async (record) => {
          seen.push(record);
          const evaluation = await evaluateRules(ruleSet, record, { trigger: 'encounter-planned', now });
          expect(evaluation.results[0].status).toBe('fired');
          return [];
        },
      },
    );
    expect(seen).toHaveLength(1);
    expect(seen[0].additional?.map((resource) => resource.resourceType)).toEqual(['MedicationStatement']);
  });

  it('CDS Hooks: discovery asks for the types in prefetch, and a prefetch carrying them fires', async () => {
    const ruleSet = await loaded();
    const app = express();
    app.use(
      createCdsHooksRouter({
        ruleSet: () => ruleSet,
        store: new InMemoryNudgeStore(),
        logger: silentLogger(),
        reviewAppUrl: 'http://review.example/launch',
        timeBudgetMs: 10_000,
        findDraftedNudges: async () => undefined,
        now: () => now,
      }),
    );
    const cds = await new Promise<Server>((resolve) => {
      const started = app.listen(0, '127.0.0.1', () => resolve(started));
    });
    try {
      const url = `http://127.0.0.1:${(cds.address() as AddressInfo).port}`;
      const discovery = (await (await fetch(`${url}/cds-services`)).json()) as {
        services: { id: string; prefetch: Record<string, string> }[];
      };
      const patientView = discovery.services.find(
        (service) => service.id === 'guideline-nudges-patient-view',
      );
      expect(patientView?.prefetch.medicationStatement).toBe(
        'MedicationStatement?patient={{context.patientId}}&_include=MedicationStatement:medication',
      );
      expect(patientView?.prefetch.medications).toBe(
        'MedicationRequest?patient={{context.patientId}}&_include=MedicationRequest:medication',
      );
      expect(patientView?.prefetch.serviceRequest).toBe('ServiceRequest?patient={{context.patientId}}');

      const searchset = (type: string): Bundle => ({
        resourceType: 'Bundle',
        type: 'searchset',
        entry: statementOnly
          .filter((resource) => resource.resourceType === type)
          .map((resource) => ({ resource })),
      });
      const prefetch: Record<string, unknown> = { patient: statementOnly[0] };
      for (const [key, template] of Object.entries(patientView?.prefetch ?? {})) {
        if (key !== 'patient') prefetch[key] = searchset(template.split('?')[0]);
      }
      const response = await fetch(`${url}/cds-services/guideline-nudges-patient-view`, {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify({
          hook: 'patient-view',
          hookInstance: 'd1577c69-dfbe-44ad-ba6d-3e05e953b2ea',
          context: { userId: 'Practitioner/p1', patientId },
          prefetch,
        }),
      });
      const cards = ((await response.json()) as { cards: { summary: string }[] }).cards;
      expect(cards.map((card) => card.summary)).toContain('Pain management review');
    } finally {
      cds.close();
    }
  });

  it('refuses a library that reads a type the service cannot load, at the retrieve', async () => {
    const result = await loadRuleSet(
      painFolder({
        'cql/PainCommons.cql': commons.replace(
          'define "Active Referrals"',
          'define "Prescribers": [Practitioner]\ndefine "Active Referrals"',
        ),
      }),
    );
    expect(result.ok).toBe(false);
    if (result.ok) return;
    expect(result.errors).toHaveLength(1);
    expect(result.errors[0]).toMatchObject({
      line: 5,
      message: expect.stringContaining('PainCommons reads Practitioner, which the service cannot load'),
    });
    expect(path.basename(result.errors[0].file)).toBe('PainCommons.cql');
  });
});
