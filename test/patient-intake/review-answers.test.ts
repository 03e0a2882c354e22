import type { Patient } from 'fhir/r4.js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { describeCitation } from '../../src/http/citation-view.ts';
import type { RunningService } from '../../src/service.ts';
import { bookVisit, startIntakeService } from './intake-support.ts';

/**
 * The review app beside the briefing: a `[QuestionnaireResponse/id]` citation opens the patient's answers, each
 * question as asked with its answer; and the review app's launch asks for (and the sandbox EHR grants) reading
 * the answers and flags the briefing cites, which the default scopes alone would refuse.
 */
describe('the answers in the review app', () => {
  it('shows each question with its answer when the citation is opened', () => {
    const view = describeCitation({
      resourceType: 'QuestionnaireResponse',
      id: 'qr1',
      status: 'completed',
      authored: '2026-12-07T10:00:00Z',
      subject: { reference: 'Patient/p1' },
      item: [
        {
          linkId: 'concern',
          text: 'What is the main reason for your visit?',
          answer: [{ valueString: 'Foot pain' }],
        },
        { linkId: 'pain', text: 'Are you in pain?', answer: [{ valueBoolean: true }] },
        {
          linkId: 'onset',
          text: 'When did it start?',
          answer: [{ valueCoding: { code: 'weeks', display: 'One to four weeks ago' } }],
        },
      ],
    });
    expect(view.fields).toEqual(
      expect.arrayContaining([
        { label: 'Answered', value: '2026-12-07T10:00:00Z' },
        { label: 'What is the main reason for your visit?', value: 'Foot pain' },
        { label: 'Are you in pain?', value: 'yes' },
        { label: 'When did it start?', value: 'One to four weeks ago' },
      ]),
    );
  });

  describe('on the sandbox', () => {
    let service: RunningService;
    let fhir: FhirClient;

    beforeAll(async () => {
      ({ service, fhir } = await startIntakeService());
    }, 120_000);

    afterAll(async () => {
      await service?.close();
    });

    it("launches the review app with the intake's read scopes, granted", async () => {
      const [patient] = await fhir.search<Patient>('Patient', { _count: 1 });
      const visit = await bookVisit(fhir, patient?.id as string);
      let url = `${service.url}/sandbox/launch/open?patient=${patient?.id}&encounter=${visit.id}`;
      const visited: string[] = [];
      // Follow the EHR launch's redirects to the authorization server's answer to the authorize request.
      for (let hop = 0; hop < 6; hop++) {
        const answer = await fetch(url, { redirect: 'manual' });
        const location = answer.headers.get('location');
        if (!location) break;
        url = new URL(location, url).href;
        visited.push(url);
      }
      const authorize = visited.find((visit) => new URL(visit).searchParams.has('scope'));
      const scope = new URL(authorize as string).searchParams.get('scope')?.split(' ') ?? [];
      expect(scope).toEqual(expect.arrayContaining(['patient/QuestionnaireResponse.r', 'patient/Flag.r']));
      // The sandbox EHR registered them: no hop carries an invalid_scope error back to the app.
      expect(visited.join(' ')).not.toContain('invalid_scope');
      // The authorization server went on to sign the clinician in, rather than answer the app with an error.
      expect(visited.at(-1)).toContain('/sandbox/auth/interaction/');
    }, 60_000);
  });
});
