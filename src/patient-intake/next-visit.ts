import type { Appointment, Encounter } from 'fhir/r4.js';
import type { FhirClient } from '../../fhir/fhir-client.ts';

/**
 * The patient's next booked visit, read with the patient's own token (standalone launch from a portal): the
 * earliest booked Appointment or planned Encounter that starts in the future. An Encounter that names one of the
 * Appointments is the same visit and stands for it.
 */
export type BookedVisit = { encounterId: string } | { appointmentId: string };

export async function nextVisit(
  fhir: FhirClient,
  patientId: string,
  now: Date,
): Promise<BookedVisit | undefined> {
  const patient = `Patient/${patientId}`;
  const [appointments, encounters] = await Promise.all([
    fhir.search<Appointment>('Appointment', { patient, status: 'booked', _count: 50 }),
    fhir.search<Encounter>('Encounter', { patient, status: 'planned', _count: 50 }),
  ]);
  const after = now.getTime();
  const named = new Set(
    encounters.flatMap((encounter) => (encounter.appointment ?? []).map((reference) => reference.reference)),
  );
  const candidates: { start: number; visit: BookedVisit }[] = [];
  for (const encounter of encounters) {
    // Searches are a hint too: only what is this patient's and still planned counts.
    if (!encounter.id || encounter.subject?.reference !== patient || encounter.status !== 'planned') continue;
    const start = Date.parse(encounter.period?.start ?? '');
    if (Number.isFinite(start) && start <= after) continue;
    candidates.push({
      start: Number.isFinite(start) ? start : Number.MAX_SAFE_INTEGER,
      visit: { encounterId: encounter.id },
    });
  }
  for (const appointment of appointments) {
    if (!appointment.id || appointment.status !== 'booked' || named.has(`Appointment/${appointment.id}`))
      continue;
    const takesPart = (appointment.participant ?? []).some(
      (participant) => participant.actor?.reference === patient && participant.status !== 'declined',
    );
    const start = Date.parse(appointment.start ?? '');
    if (!takesPart || !Number.isFinite(start) || start <= after) continue;
    candidates.push({ start, visit: { appointmentId: appointment.id } });
  }
  candidates.sort((left, right) => left.start - right.start);
  return candidates[0]?.visit;
}
