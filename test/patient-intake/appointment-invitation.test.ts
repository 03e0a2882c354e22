import { validateResource } from '@medplum/core';
import type { Resource } from '@medplum/fhirtypes';
import type {
  Appointment,
  Communication,
  Encounter,
  Flag,
  Patient,
  QuestionnaireResponse,
  Subscription,
} from 'fhir/r4.js';
import { afterAll, afterEach, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { medplumSignature } from '../../src/intake/medplum-signature.ts';
import { appointmentExtensionUrl } from '../../src/patient-intake/questionnaire-response.ts';
import type { RunningService } from '../../src/service.ts';
import { type IntakeHarness, startIntakeHarness, waitFor as waitUntil } from '../support/intake-harness.ts';
import { notificationBundle } from '../support/notification-builder.ts';
import {
  answerByForm,
  briefingCiting,
  linkOf,
  startIntakeService,
  waitFor,
  withFhirDefinitions,
} from './intake-support.ts';

/**
 * Invitations on a booked Appointment (issue 16, item 1): every way a real server tells of one (HAPI's classic
 * rest-hook PUT to <endpoint>/Appointment/<id>, Medplum's bare signed resource, a Backport focus), the
 * Appointment read again (the notification is only a hint: booked, a patient taking part, starting in the
 * future), one invitation per Appointment, and the sandbox delivering Appointment events to the service's own
 * Appointment Subscription, through to the answers that name the Appointment (and its Encounter once there is one).
 */
const intakeSecret = 'appointment-invitation-test-secret-0123456789';
const medplumSecret = 'medplum-secret-0123456789';

function appointment(id: string, patientId: string, changes: Partial<Appointment> = {}): Appointment {
  const start = new Date(Date.now() + 2 * 86_400_000);
  return {
    resourceType: 'Appointment',
    id,
    status: 'booked',
    start: start.toISOString(),
    end: new Date(start.getTime() + 20 * 60_000).toISOString(),
    participant: [
      { actor: { reference: `Patient/${patientId}` }, status: 'accepted' },
      { actor: { reference: 'Practitioner/doctor-1' }, status: 'accepted' },
    ],
    ...changes,
  };
}

function invitationsAbout(harness: IntakeHarness, appointmentId: string) {
  return harness.standIn
    .all('Communication')
    .filter((communication) =>
      ((communication as unknown as Communication).about ?? []).some(
        (about) => about.reference === `Appointment/${appointmentId}`,
      ),
    ) as unknown as Communication[];
}

describe('Appointment events from real servers reach the intake', () => {
  let harness: IntakeHarness | undefined;
  afterEach(async () => {
    await harness?.close();
    harness = undefined;
  });

  async function start(): Promise<IntakeHarness> {
    harness = await startIntakeHarness({
      patientIntake: { enabled: true, secret: intakeSecret },
      intake: { medplumSecrets: { 'medplum-appointments': medplumSecret } },
    });
    harness.standIn.write({ resourceType: 'Patient', id: 'patient-1' } as Patient as never);
    return harness;
  }

  it("HAPI's classic rest-hook (PUT <endpoint>/Appointment/<id>): one invitation, however often it is told", async () => {
    const current = await start();
    const booked = appointment('appointment-hapi', 'patient-1');
    current.standIn.write(booked as never);
    for (let attempt = 0; attempt < 3; attempt++) {
      const response = await current.post('/notify/Appointment/appointment-hapi', booked, {}, 'PUT');
      expect(response.status).toBe(200);
      await waitUntil(() => invitationsAbout(current, 'appointment-hapi').length === 1, 'the invitation');
    }
    const [invitation] = invitationsAbout(current, 'appointment-hapi');
    expect(invitation?.subject?.reference).toBe('Patient/patient-1');
    expect(invitation?.encounter).toBeUndefined();
    expect(linkOf(invitation as Communication)).toMatch(/\/intake\/[A-Za-z0-9_-]+$/);
    // Nothing from the Appointment or the patient in the link.
    expect(linkOf(invitation as Communication)).not.toMatch(/appointment-hapi|patient-1/);
    // The id in the URL must be the resource's: a mismatch is refused before anything is read.
    const mismatch = await current.post('/notify/Appointment/another', booked, {}, 'PUT');
    expect(mismatch.status).toBe(422);
    // Without the bearer secret: refused.
    const unauthenticated = await current.post('/notify/Appointment/appointment-hapi', booked, {
      authorization: 'Bearer wrong',
    });
    expect(unauthenticated.status).toBe(401);
  });

  it('Medplum (the bare resource, signed): invites; a tampered signature is refused', async () => {
    const current = await start();
    const booked = appointment('appointment-medplum', 'patient-1');
    current.standIn.write(booked as never);
    const body = JSON.stringify(booked);
    const signed = (raw: string) => ({
      authorization: '',
      'x-signature': medplumSignature(Buffer.from(raw), medplumSecret),
      'x-medplum-subscription': 'medplum-appointments',
      'x-medplum-interaction': 'create',
    });
    const refused = await current.post('/notify', body.replace('booked', 'proposed'), signed(body));
    expect(refused.status).toBe(401);
    const response = await current.post('/notify', body, signed(body));
    expect(response.status).toBe(200);
    await waitUntil(() => invitationsAbout(current, 'appointment-medplum').length === 1, 'the invitation');
  });

  it('a Backport notification whose focus is an Appointment invites; the Appointment is read again, not trusted', async () => {
    const current = await start();
    // The notification is a hint: what the server holds decides. Proposed, past, patient-less: no invitation.
    current.standIn.write(appointment('proposed', 'patient-1', { status: 'proposed' }) as never);
    current.standIn.write(
      appointment('past', 'patient-1', { start: new Date(Date.now() - 86_400_000).toISOString() }) as never,
    );
    current.standIn.write(
      appointment('no-patient', 'patient-1', {
        participant: [{ actor: { reference: 'Practitioner/doctor-1' }, status: 'accepted' }],
      }) as never,
    );
    current.standIn.write(
      appointment('declined', 'patient-1', {
        participant: [{ actor: { reference: 'Patient/patient-1' }, status: 'declined' }],
      }) as never,
    );
    current.standIn.write(appointment('booked', 'patient-1') as never);
    const focuses = ['proposed', 'past', 'no-patient', 'declined', 'missing', 'booked'];
    const notification = notificationBundle({
      subscription: `${current.standIn.url}/Subscription/appointments`,
      type: 'event-notification',
      counter: focuses.length,
      events: focuses.map((id, index) => ({
        number: index + 1,
        focus: `${current.standIn.url}/Appointment/${id}`,
      })),
    });
    expect((await current.post('/notify', notification)).status).toBe(200);
    await waitUntil(() => invitationsAbout(current, 'booked').length === 1, 'the invitation');
    await waitUntil(
      () => current.standIn.requests.filter((request) => request.startsWith('GET /Appointment/')).length >= 6,
      'every Appointment read',
    );
    await new Promise((resolve) => setTimeout(resolve, 300));
    for (const id of ['proposed', 'past', 'no-patient', 'declined', 'missing'])
      expect(invitationsAbout(current, id)).toEqual([]);
    expect(current.standIn.all('Communication')).toHaveLength(1);
    // No encounter job for an Appointment.
    expect(await current.service.queue.counts()).toMatchObject({ pending: 0, running: 0, done: 0 });
  });

  it('polling finds a booked Appointment no server told of (servers without Subscriptions)', async () => {
    const current = await start();
    // Another visit of the same patient, invited before: not this Appointment's visit.
    current.standIn.write({
      resourceType: 'Encounter',
      id: 'other-visit',
      status: 'planned',
      subject: { reference: 'Patient/patient-1' },
    } as never);
    current.standIn.write({
      resourceType: 'Communication',
      identifier: [
        { system: 'urn:ehr-draft-agent:patient-intake/invitation', value: 'Encounter/other-visit' },
      ],
      status: 'preparation',
      subject: { reference: 'Patient/patient-1' },
    } as never);
    current.standIn.write(appointment('polled', 'patient-1') as never);
    current.standIn.write(appointment('polled-proposed', 'patient-1', { status: 'proposed' }) as never);
    // HAPI's rest-hook without payload asks for a reconcile: the poll is what finds the Appointment.
    expect((await current.post('/notify', undefined)).status).toBe(200);
    await waitUntil(() => invitationsAbout(current, 'polled').length === 1, 'the invitation from polling');
    expect(
      current.standIn.requests.some((request) => /^GET \/Appointment\?.*status=booked/.test(request)),
    ).toBe(true);
    expect(invitationsAbout(current, 'polled-proposed')).toEqual([]);
  });
});

describe('the sandbox delivers Appointment events; the answers name the Appointment', () => {
  let service: RunningService;
  let fhir: FhirClient;
  let patientId: string;

  beforeAll(async () => {
    withFhirDefinitions();
    ({ service, fhir } = await startIntakeService());
    const [patient] = await fhir.search<Patient>('Patient', { _count: 1 });
    patientId = patient?.id as string;
    // The service's Appointment Subscription, active once the sandbox's handshake was answered.
    await waitFor(async () => {
      const subscriptions = await fhir.search<Subscription>('Subscription', {});
      return subscriptions.some(
        (subscription) =>
          subscription.criteria === 'Appointment?status=booked' && subscription.status === 'active',
      )
        ? true
        : undefined;
    }, 'the active Appointment Subscription');
  }, 120_000);

  afterAll(async () => {
    await service?.close();
  });

  async function book(changes: Partial<Appointment> = {}): Promise<Appointment> {
    const { id: _id, ...rest } = appointment('x', patientId, changes);
    return (await fhir.create<Appointment>(rest)).resource;
  }

  const invitation = (appointmentId: string) =>
    fhir
      .search<Communication>('Communication', { patient: `Patient/${patientId}` })
      .then((found) =>
        found.find((communication) =>
          (communication.about ?? []).some((about) => about.reference === `Appointment/${appointmentId}`),
        ),
      );

  it('a booked Appointment written to the sandbox gets one invitation; its answers carry the Appointment', async () => {
    const proposed = await book({ status: 'proposed' });
    const booked = await book();
    const sent = await waitFor(() => invitation(booked.id as string), 'the invitation');
    expect(sent.encounter).toBeUndefined();
    expect(sent.status).toBe('preparation');
    expect(await invitation(proposed.id as string)).toBeUndefined();

    const link = linkOf(sent);
    const page = await fetch(link);
    expect(page.status).toBe(200);
    await answerByForm(link);
    const [response] = await waitFor(async () => {
      const found = await fhir.search<QuestionnaireResponse>('QuestionnaireResponse', {
        patient: `Patient/${patientId}`,
      });
      const mine = found.filter((candidate) =>
        candidate.extension?.some(
          (extension) => extension.valueReference?.reference === `Appointment/${booked.id}`,
        ),
      );
      return mine.length > 0 ? mine : undefined;
    }, 'the answers');
    expect(response?.status).toBe('completed');
    expect(response?.encounter).toBeUndefined();
    expect(response?.extension).toEqual([
      { url: appointmentExtensionUrl, valueReference: { reference: `Appointment/${booked.id}` } },
    ]);
    expect(() => validateResource(response as unknown as Resource)).not.toThrow();
    // One time: the link is used now.
    expect(await (await fetch(link)).text()).toMatch(/already|used/i);
  });

  it('an Appointment booked after its Encounter was invited is the same visit: no second invitation', async () => {
    const proposed = await book({ status: 'proposed' });
    const start = new Date(Date.now() + 2 * 86_400_000);
    const encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'planned',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patientId}` },
        appointment: [{ reference: `Appointment/${proposed.id}` }],
        period: { start: start.toISOString() },
      })
    ).resource;
    const first = await waitFor(
      () =>
        fhir
          .search<Communication>('Communication', { encounter: `Encounter/${encounter.id}` })
          .then((found) => found[0]),
      "the Encounter's invitation",
    );
    expect(first).toBeDefined();
    await fhir.update<Appointment>({ ...proposed, status: 'booked' });
    // A later booked Appointment for the same patient is the marker that the first event was worked.
    const marker = await book();
    await waitFor(() => invitation(marker.id as string), 'the marker invitation');
    await new Promise((resolve) => setTimeout(resolve, 300));
    expect(await invitation(proposed.id as string)).toBeUndefined();
  });

  it("answers given before the Encounter existed are in that Encounter's briefing, cited", async () => {
    const booked = await book();
    const sent = await waitFor(() => invitation(booked.id as string), 'the invitation');
    await answerByForm(linkOf(sent), 'Sore throat and fever');
    const response = await waitFor(async () => {
      const found = await fhir.search<QuestionnaireResponse>('QuestionnaireResponse', {
        patient: `Patient/${patientId}`,
      });
      return found.find((candidate) =>
        candidate.extension?.some(
          (extension) => extension.valueReference?.reference === `Appointment/${booked.id}`,
        ),
      );
    }, 'the answers');
    expect(response.encounter).toBeUndefined();
    const start = new Date(Date.now() + 2 * 86_400_000);
    const encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'planned',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patientId}` },
        appointment: [{ reference: `Appointment/${booked.id}` }],
        period: { start: start.toISOString() },
      })
    ).resource;
    const briefing = await waitFor(
      () => briefingCiting(fhir, encounter.id as string, `[QuestionnaireResponse/${response.id}]`),
      'the briefing citing the answers',
    );
    expect(briefing).toContain('"Sore throat and fever"');
  }, 90_000);

  it("a soon answer given for the Appointment reaches the Encounter's CDS urgency card and briefing", async () => {
    const booked = await book();
    const sent = await waitFor(() => invitation(booked.id as string), 'the invitation');
    const link = linkOf(sent);
    const state = /name="state" value="([^"]+)"/.exec(await (await fetch(link)).text())?.[1] as string;
    const done = await fetch(link, {
      method: 'POST',
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({
        state,
        'answer-concern': 'Back pain',
        'answer-onset': 'days',
        'answer-severity': 'severe',
        'answer-pain': 'no',
        'answer-takes-medicines': 'no',
        'answer-has-allergies': 'no',
        'answer-chest-pain': 'no',
        'answer-short-of-breath': 'no',
        'answer-self-harm': 'no',
      }).toString(),
    });
    expect(await done.text()).toContain('Your care team may contact you before your visit');
    const flags = await fhir.search<Flag>('Flag', { patient: `Patient/${patientId}` });
    const flag = flags.find((candidate) =>
      candidate.identifier?.some((identifier) => identifier.value === `Appointment/${booked.id}`),
    );
    expect(flag?.encounter).toBeUndefined();
    const encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'planned',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patientId}` },
        appointment: [{ reference: `Appointment/${booked.id}` }],
        period: { start: new Date(Date.now() + 2 * 86_400_000).toISOString() },
      })
    ).resource;
    const briefing = await waitFor(
      () => briefingCiting(fhir, encounter.id as string, `[Flag/${flag?.id}]`),
      'the briefing citing the flag',
    );
    expect(briefing).toMatch(/- Soon: Pre-visit intake answer to see soon/);
    const start = await fetch(`${service.url}/cds-services/guideline-nudges-encounter-start`, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({
        hook: 'encounter-start',
        hookInstance: 'c3b4d5e6-0000-4000-8000-000000000009',
        context: { userId: 'Practitioner/sbx-clinician', patientId, encounterId: encounter.id },
      }),
    });
    const { cards } = (await start.json()) as { cards: { summary: string; detail?: string }[] };
    const urgency = cards.find((card) => card.summary.startsWith('Visit urgency:'));
    expect(urgency?.detail).toContain('Pre-visit intake answer to see soon');
  }, 90_000);

  it('the Encounter that names the Appointment gets no second invitation, and the answers reference it', async () => {
    const booked = await book();
    const sent = await waitFor(() => invitation(booked.id as string), 'the invitation');
    const start = new Date(Date.now() + 2 * 86_400_000);
    const encounter = (
      await fhir.create<Encounter>({
        resourceType: 'Encounter',
        status: 'planned',
        class: { system: 'http://terminology.hl7.org/CodeSystem/v3-ActCode', code: 'AMB' },
        subject: { reference: `Patient/${patientId}` },
        appointment: [{ reference: `Appointment/${booked.id}` }],
        period: { start: start.toISOString() },
      })
    ).resource;
    // The Encounter's job ran (its briefing is drafted) without inviting the patient a second time.
    await waitFor(async () => {
      const jobs = await service.queue.list('done');
      return jobs.some((job) => job.encounterId === encounter.id) ? true : undefined;
    }, 'the encounter job');
    const invitations = await fhir.search<Communication>('Communication', {
      patient: `Patient/${patientId}`,
    });
    expect(invitations.filter((found) => found.encounter?.reference === `Encounter/${encounter.id}`)).toEqual(
      [],
    );

    await answerByForm(linkOf(sent));
    const [response] = await waitFor(async () => {
      const found = await fhir.search<QuestionnaireResponse>('QuestionnaireResponse', {
        encounter: `Encounter/${encounter.id}`,
      });
      return found.length > 0 ? found : undefined;
    }, 'the answers');
    expect(response?.extension?.[0]?.valueReference?.reference).toBe(`Appointment/${booked.id}`);
    expect(() => validateResource(response as unknown as Resource)).not.toThrow();
  });
});
