import type { Condition, DocumentReference, MedicationRequest } from 'fhir/r4.js';
import { afterEach, beforeAll, describe, expect, it } from 'vitest';
import { citationsIn } from '../../agents/citation-verifier.ts';
import {
  applyContentPolicy,
  contentPolicyOf,
  defaultContentPolicy,
} from '../../agents/clinical-content-policy.ts';
import type { DraftEngine, NudgeInput } from '../../agents/draft-engine.ts';
import { createExtractiveEngine } from '../../agents/extractive-engine.ts';
import { MedGemmaEngine } from '../../agents/medgemma-engine.ts';
import { problemList, problemName } from '../../agents/problem-list.ts';
import { PromptLibrary } from '../../agents/prompt-library.ts';
import { DraftNoteWriter } from '../../fhir/draft-note.ts';
import { FhirClient } from '../../fhir/fhir-client.ts';
import type { PatientRecord } from '../../fhir/patient-record.ts';
import { clinicalContentConfigSchema } from '../../src/config/clinical-content-config.ts';
import { createLogger, silentLogger } from '../../src/log.ts';
import { agentBudgetSchema } from '../../src/model/model-config.ts';
import { processEncounterJob } from '../../src/pipeline/process-encounter-job.ts';
import type { EncounterJob } from '../../src/queue/job-queue.ts';
import { type FhirStandIn, type StandInResource, startFhirStandIn } from '../support/fhir-stand-in.ts';
import { buildPatientRecord } from '../support/patient-record-builder.ts';
import { cooperativeReply, ScriptedProvider } from '../support/scripted-model.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';
import { loadSyntheaPatients, type SyntheaPatient } from '../support/synthea-records.ts';

/**
 * Issue 19, item 3: a problem list a clinician would keep. Social findings that EHRs (and Synthea) store as
 * Conditions are not problems; sensitive findings never reach a draft, a model or a citation unless the site allows
 * them, and the draft says how many were left out; repeats and superseded findings collapse; weight orders the list.
 */
const snomed = 'http://snomed.info/sct';
let conditionNumber = 0;

function condition(
  code: string,
  display: string,
  onset: string,
  options: { status?: string; system?: string } = {},
): Condition {
  return {
    resourceType: 'Condition',
    id: `c${++conditionNumber}`,
    subject: { reference: 'Patient/p1' },
    clinicalStatus: {
      coding: [
        {
          system: 'http://terminology.hl7.org/CodeSystem/condition-clinical',
          code: options.status ?? 'active',
        },
      ],
    },
    code: { coding: [{ system: options.system ?? snomed, code, display }], text: display },
    onsetDateTime: onset,
  };
}

function recordWith(conditions: Condition[]): PatientRecord {
  const record = buildPatientRecord({ patientId: 'p1', noteCount: 1 });
  return { ...record, conditions };
}

const namesOf = (conditions: Condition[]) => conditions.map(problemName);

describe('the problem list', () => {
  it('collapses repeats and superseded findings: the latest BMI class, no prediabetes beside diabetes, a confirmed suspicion', () => {
    const list = problemList(
      recordWith([
        condition('162864005', 'Body mass index 30+ - obesity (finding)', '2010-02-01'),
        condition('408512008', 'Body mass index 40+ - severely obese (finding)', '2016-05-01'),
        condition('15777000', 'Prediabetes', '1958-01-01'),
        condition('44054006', 'Diabetes mellitus type 2', '1969-01-01'),
        condition('840544004', 'Suspected COVID-19', '2020-11-28'),
        condition('840539006', 'COVID-19', '2020-11-28'),
        condition('38341003', 'Hypertension', '2001-01-01'),
        condition('38341003', 'Hypertension', '2003-01-01'),
      ]),
    );
    expect(namesOf(list.problems).sort()).toEqual([
      'Body mass index 40+ - severely obese',
      'COVID-19',
      'Diabetes mellitus type 2',
      'Hypertension',
    ]);
    // The same code twice is one problem, the later one.
    expect(list.problems.find((problem) => problemName(problem) === 'Hypertension')?.onsetDateTime).toBe(
      '2003-01-01',
    );
  });

  it('keeps prediabetes while no diabetes is diagnosed, and the newest BMI class even when it is the lower one', () => {
    const list = problemList(
      recordWith([
        condition('408512008', 'Body mass index 40+ - severely obese (finding)', '2012-01-01'),
        condition('162864005', 'Body mass index 30+ - obesity (finding)', '2019-01-01'),
        condition('15777000', 'Prediabetes', '2018-01-01'),
      ]),
    );
    expect(namesOf(list.problems).sort()).toEqual(['Body mass index 30+ - obesity', 'Prediabetes']);
  });

  it('puts chronic and serious disorders and recent changes before old findings, symptoms and stale acute illnesses', () => {
    const record = recordWith([
      condition('57676002', 'Joint pain (finding)', '2015-01-01'),
      condition('444814009', 'Viral sinusitis (disorder)', '2010-01-01'),
      condition('431855005', 'Chronic kidney disease stage 1 (disorder)', '2012-01-01'),
      condition('38341003', 'Hypertension', '2005-01-01'),
      condition('254837009', 'Malignant neoplasm of breast (disorder)', '2011-01-01'),
      condition('195662009', 'Acute viral pharyngitis (disorder)', '2025-01-02'),
    ]);
    // The visit is 2025-01-31 (the builder's encounter): the pharyngitis began four weeks before it.
    record.encounter = {
      ...record.encounter,
      period: { start: '2025-01-31T09:00:00Z', end: '2025-01-31T09:30:00Z' },
    };
    expect(namesOf(problemList(record).problems)).toEqual([
      'Chronic kidney disease stage 1',
      'Malignant neoplasm of breast',
      'Hypertension',
      'Acute viral pharyngitis',
      'Joint pain',
      // A sinusitis still "active" fifteen years on was never closed: last.
      'Viral sinusitis',
    ]);
  });

  it('caps the list in the draft and counts the rest ("and 15 more")', async () => {
    const many = Array.from({ length: 22 }, (_, index) =>
      condition(
        `9000${index}`,
        `Chronic disorder number ${index + 1}`,
        `2001-01-${String(index + 1).padStart(2, '0')}`,
      ),
    );
    const record = recordWith(many);
    const result = await createExtractiveEngine().draft({ kind: 'progress-summary', record, nudges: [] });
    const section = result.text.split('Active problems:\n')[1].split('\n\n')[0].split('\n');
    expect(section).toHaveLength(8);
    expect(section[7]).toBe('- and 15 more active problems [Patient/p1]');
  });
});

describe('the site content policy', () => {
  const ipv = () => condition('706893006', 'Victim of intimate partner abuse (finding)', '2021-01-01');
  const employment = () => condition('160903007', 'Full-time employment (finding)', '2020-01-01');

  it('moves social findings to Social history and leaves sensitive ones out of the draft, counted', async () => {
    const record = recordWith([
      condition('44054006', 'Diabetes mellitus type 2', '2015-01-01'),
      employment(),
      condition('224299000', 'Received higher education (finding)', '2001-01-01'),
      condition('73595000', 'Stress (finding)', '2019-01-01'),
      ipv(),
      condition('266948004', 'Has a criminal record (finding)', '2012-01-01'),
      condition('F10.20', 'Alcohol dependence, uncomplicated', '2018-01-01', {
        system: 'http://hl7.org/fhir/sid/icd-10-cm',
      }),
      // A local code no list knows: its name gives it away.
      condition('LOC-77', 'HIV infection, asymptomatic', '2014-01-01', { system: 'urn:local:problems' }),
    ]);
    const filtered = applyContentPolicy(record, defaultContentPolicy);
    expect(namesOf(filtered.conditions)).toEqual([
      'Diabetes mellitus type 2',
      'Full-time employment',
      'Received higher education',
      'Stress',
    ]);
    expect(filtered.contentPolicy).toMatchObject({ withheldFindings: 4, withheldEntries: 0 });
    // The retrieved record is not changed.
    expect(record.conditions).toHaveLength(8);

    const { text } = await createExtractiveEngine().draft({
      kind: 'progress-summary',
      record: filtered,
      nudges: [],
    });
    const problems = text.split('Active problems:\n')[1].split('\n\n')[0];
    expect(problems).toContain('Diabetes mellitus type 2');
    expect(problems).not.toMatch(/employment|education|Stress/);
    expect(problems).toContain('- 4 findings left out by site policy [Patient/p1]');
    expect(text).toMatch(/Social history:\n- .*Full-time employment.*Received higher education/);
    expect(text).not.toMatch(/intimate|criminal|alcohol|HIV/i);
  });

  it('writes a sensitive category the site allows, and omits social history when the site says so', async () => {
    const allowing = contentPolicyOf(
      clinicalContentConfigSchema.parse({ sensitive: { allow: 'intimate-partner-violence' } }),
    );
    const allowed = applyContentPolicy(recordWith([ipv(), employment()]), allowing);
    expect(namesOf(allowed.conditions)).toContain('Victim of intimate partner abuse');
    const { text } = await createExtractiveEngine().draft({
      kind: 'progress-summary',
      record: allowed,
      nudges: [],
    });
    expect(text).toContain('Victim of intimate partner abuse');
    expect(text).not.toContain('left out by site policy');

    const omitting = contentPolicyOf(clinicalContentConfigSchema.parse({ socialHistory: 'omit' }));
    const omitted = applyContentPolicy(recordWith([ipv(), employment()]), omitting);
    expect(omitted.conditions).toEqual([]);
    const omittedText = (
      await createExtractiveEngine().draft({ kind: 'progress-summary', record: omitted, nudges: [] })
    ).text;
    expect(omittedText).not.toContain('Social history:');
    expect(omittedText).toContain('- 2 findings left out by site policy [Patient/p1]');
  });

  it("takes a site's own codes (system|code and prefixes) and can match by code alone", () => {
    const policy = contentPolicyOf(
      clinicalContentConfigSchema.parse({
        socialCodes: ['urn:local:problems|SOC-1'],
        sensitive: { codes: { 'mental-health': ['urn:local:problems|PSY*'] }, matchNames: false },
      }),
    );
    const local = (code: string, display: string) =>
      condition(code, display, '2020-01-01', { system: 'urn:local:problems' });
    const filtered = applyContentPolicy(
      recordWith([
        local('PSY-12', 'Condition twelve'),
        local('SOC-1', 'Lives alone'),
        local('HIV-1', 'HIV infection'),
      ]),
      policy,
    );
    // With names not matched, only codes decide: the local HIV code is not on any list.
    expect(namesOf(filtered.conditions)).toEqual(['Lives alone', 'HIV infection']);
    expect(namesOf(problemList(filtered).social)).toEqual(['Lives alone']);
    expect(() => clinicalContentConfigSchema.parse({ sensitive: { allow: ['gossip'] } })).toThrow();
    expect(() => clinicalContentConfigSchema.parse({ socialCodes: ['bad code with spaces'] })).toThrow();
  });

  it('takes the items and sentences naming a withheld category out of the notes engines get', () => {
    const record = recordWith([]);
    const text = [
      '# History of Present Illness',
      'Patient has a history of part-time employment (finding), victim of intimate partner abuse (finding), stress (finding).',
      'She drinks alcohol daily. Sleeps well.',
      '# Plan',
      'Follow up in 3 months.',
    ].join('\n');
    record.notes = [{ ...record.notes[0], text }];
    const filtered = applyContentPolicy(record, defaultContentPolicy);
    expect(filtered.notes[0].text).toBe(
      [
        '# History of Present Illness',
        'Patient has a history of part-time employment (finding), stress (finding).',
        'Sleeps well.',
        '# Plan',
        'Follow up in 3 months.',
      ].join('\n'),
    );
    expect(record.notes[0].text).toBe(text);
    const allowing = contentPolicyOf(
      clinicalContentConfigSchema.parse({ sensitive: { allow: ['substance-use'] } }),
    );
    expect(applyContentPolicy(record, allowing).notes[0].text).toContain('She drinks alcohol daily.');
  });

  it("keeps a medication but takes a withheld reason out of its instructions ('as needed for anxiety')", async () => {
    const record = recordWith([]);
    const alprazolam: MedicationRequest = {
      resourceType: 'MedicationRequest',
      id: 'alprazolam',
      status: 'active',
      intent: 'order',
      subject: { reference: `Patient/${record.patient.id}` },
      medicationCodeableConcept: { text: 'alprazolam 0.5 mg oral tablet' },
      dosageInstruction: [
        {
          text: '0.5 mg by mouth three times daily as needed for anxiety',
          patientInstruction: 'Take for panic attacks only.',
          asNeededCodeableConcept: {
            coding: [{ system: snomed, code: '197480006', display: 'Anxiety disorder' }],
          },
        },
      ],
    };
    record.medications = [alprazolam];
    const [kept] = applyContentPolicy(record, defaultContentPolicy).medications;
    expect(kept.dosageInstruction).toEqual([
      { text: '0.5 mg by mouth three times daily', asNeededBoolean: true },
    ]);
    const draft = await createExtractiveEngine().draft({
      kind: 'progress-summary',
      record: applyContentPolicy(record, defaultContentPolicy),
      nudges: [],
    });
    expect(draft.text).toContain('alprazolam 0.5 mg oral tablet, 0.5 mg by mouth three times daily');
    expect(draft.text).not.toMatch(/anxiety|panic/i);
    // A site that allows mental health sees the instruction as written.
    const allowing = contentPolicyOf(
      clinicalContentConfigSchema.parse({ sensitive: { allow: ['mental-health'] } }),
    );
    expect(applyContentPolicy(record, allowing).medications[0]).toBe(alprazolam);
  });

  it('leaves out what names a withheld finding: its results, its orders, its visits; the visit drafted keeps only its class', () => {
    const finding = ipv();
    const record = recordWith([finding]);
    record.observations = [
      ...record.observations,
      {
        resourceType: 'Observation',
        id: 'phq9',
        status: 'final',
        subject: { reference: 'Patient/p1' },
        code: { coding: [{ system: 'http://loinc.org', code: '44261-6', display: 'PHQ-9 total score' }] },
        valueQuantity: { value: 17 },
        effectiveDateTime: '2025-01-10',
      },
    ];
    record.medications = [
      ...record.medications,
      {
        resourceType: 'MedicationRequest',
        id: 'for-ipv',
        status: 'active',
        intent: 'order',
        subject: { reference: 'Patient/p1' },
        medicationCodeableConcept: { text: 'Ibuprofen 400 MG Oral Tablet' },
        reasonReference: [{ reference: `Condition/${finding.id}` }],
      },
    ];
    record.encounter = {
      ...record.encounter,
      type: [{ text: 'Prenatal visit' }],
      reasonReference: [{ reference: `Condition/${finding.id}` }],
    };
    const filtered = applyContentPolicy(record, defaultContentPolicy);
    expect(filtered.observations.map((observation) => observation.id)).not.toContain('phq9');
    expect(filtered.medications.map((medication) => medication.id)).not.toContain('for-ipv');
    expect(filtered.encounter.type).toBeUndefined();
    expect(filtered.encounter.reasonReference).toBeUndefined();
    expect(filtered.encounter.id).toBe(record.encounter.id);
    expect(filtered.contentPolicy).toMatchObject({ withheldFindings: 1, withheldEntries: 2 });
  });
});

/** The pipeline over a real Synthea patient with an active criminal record and unhealthy drinking, and past IPV. */
describe.skipIf(!sharedFixtures)('the policy in the pipeline, on a real Synthea patient', () => {
  const patientId = 'a4a401d1-a46a-eb4a-8a38-760d5d79d6ec';
  const draftSystem = 'urn:test:problem-list';
  let synthea: SyntheaPatient;
  let withheld: string[];
  const cleanups: (() => Promise<void>)[] = [];
  afterEach(async () => {
    for (const cleanup of cleanups.splice(0).reverse()) await cleanup();
  });

  beforeAll(async () => {
    const patients = await loadSyntheaPatients(sharedFixtures as string);
    synthea = patients.find((patient) => patient.id === patientId) as SyntheaPatient;
    const record = synthea.recordFor();
    const kept = new Set(applyContentPolicy(record, defaultContentPolicy).conditions.map((kept) => kept.id));
    withheld = record.conditions.filter((all) => !kept.has(all.id)).map((left) => `Condition/${left.id}`);
  });

  function nudge(ruleId: string, suggestedAction: string, evidence: string[]): NudgeInput {
    return {
      ruleId,
      ruleVersion: '1.0.0',
      title: suggestedAction,
      severity: 'info',
      guideline: {
        label: 'A test guideline',
        url: 'https://guideline.example/test',
        recommendation: 'Test.',
      },
      suggestedAction,
      evidence,
    };
  }

  async function run(engine: DraftEngine, seen: PatientRecord[]): Promise<string> {
    const standIn: FhirStandIn = await startFhirStandIn();
    cleanups.push(() => standIn.close());
    for (const resource of [synthea.patient, ...synthea.resources])
      standIn.write(resource as unknown as StandInResource);
    const encounter = synthea.recordFor().encounter;
    const fhir = new FhirClient({ baseUrl: standIn.url, timeoutMs: 10_000 });
    const job: EncounterJob = {
      id: 'job-1',
      encounterId: encounter.id as string,
      source: 'test',
      status: 'running',
      attempts: 1,
      createdAt: new Date().toISOString(),
      runAt: new Date().toISOString(),
    };
    const outcome = await processEncounterJob(job, {
      fhir,
      engine,
      writer: new DraftNoteWriter(fhir, draftSystem),
      triggers: { finished: 'progress-summary' },
      draftIdentifierSystem: draftSystem,
      logger: silentLogger(),
      // One nudge fires on a withheld finding, one on the patient alone: only the second may reach the draft.
      selectNudges: async (record) => {
        seen.push(record);
        return [
          nudge('withheld-rule', 'Discuss the withheld finding', [withheld[0]]),
          nudge('age-rule', 'Offer an age-based check', [`Patient/${patientId}`]),
        ];
      },
    });
    expect(outcome).toBe('draft-created');
    const draft = (standIn.all('DocumentReference') as unknown as DocumentReference[]).find((document) =>
      document.identifier?.some((identifier) => identifier.system === draftSystem),
    ) as DocumentReference;
    return Buffer.from(draft.content[0].attachment.data ?? '', 'base64').toString('utf8');
  }

  it('never writes, shows the rules, or lets an engine cite what the policy leaves out', async () => {
    expect(withheld.length).toBeGreaterThanOrEqual(4); // criminal record, drinking, IPV, pregnancies
    const seen: PatientRecord[] = [];
    const recorded: PatientRecord[] = [];
    const extractive = createExtractiveEngine();
    // An engine that tries to cite every withheld finding besides writing the extractive draft.
    const citing: DraftEngine = {
      id: 'citing',
      version: '1',
      async draft(request) {
        recorded.push(request.record);
        const result = await extractive.draft(request);
        const attempts = withheld.map((reference) => `- A finding the engine should not know [${reference}]`);
        return { ...result, text: `${result.text}\n${attempts.join('\n')}` };
      },
    };
    const text = await run(citing, seen);
    // Rules decide on the whole visit (a withheld screening result still stops a "screening due" nudge)...
    const ruleConditions = seen[0].conditions.map((kept) => `Condition/${kept.id}`);
    for (const reference of withheld) expect(ruleConditions).toContain(reference);
    // ...while the engine never gets what the policy withholds, nor a nudge resting on it.
    for (const record of recorded) {
      const references = record.conditions.map((kept) => `Condition/${kept.id}`);
      for (const reference of withheld) expect(references).not.toContain(reference);
    }
    expect(text).not.toContain('Discuss the withheld finding');
    expect(text).toContain('Offer an age-based check');
    for (const reference of withheld) expect(citationsIn(text)).not.toContain(reference);
    expect(text).not.toMatch(/criminal|alcohol|intimate|pregnan/i);
    for (const record of recorded)
      for (const note of record.notes)
        expect(note.text).not.toMatch(/criminal record|intimate partner|alcohol|pregnan/i);
    // The real notes name these findings: the notes given to engines no longer do.
    expect(
      synthea.recordFor().notes.some((note) => /criminal record|intimate partner/i.test(note.text)),
    ).toBe(true);
    expect(text).toMatch(/- \d+ findings? and \d+ related entr(y|ies) left out by site policy \[Patient\//);
    expect(text).toMatch(/Social history:\n- .*(employment|education|Stress)/);
  }, 60_000);

  it('shows the model none of it: no prompt names a withheld resource', async () => {
    const provider = new ScriptedProvider({ fallback: cooperativeReply });
    const engine = new MedGemmaEngine({
      provider,
      prompts: PromptLibrary.load(),
      budget: agentBudgetSchema.parse({}),
      logger: createLogger({ level: 'silent' }),
    });
    const text = await run(engine, []);
    expect(provider.calls.length).toBeGreaterThan(0);
    const prompts = provider.calls
      .flatMap((call) => call.messages.map((message) => message.content))
      .join('\n');
    for (const reference of withheld) expect(prompts).not.toContain(reference);
    expect(prompts).not.toMatch(/criminal record|intimate partner|alcohol drinking|pregnancy/i);
    expect(prompts).toContain('Active problems');
    // The model path says what was left out too.
    expect(text).toMatch(/left out by site policy \[Patient\//);
  }, 120_000);
});
