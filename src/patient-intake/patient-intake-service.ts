import path from 'node:path';
import type { Appointment, Encounter, Patient, QuestionnaireResponse } from 'fhir/r4.js';
import type { PromptLibrary } from '../../agents/prompt-library.ts';
import type { FhirClient } from '../../fhir/fhir-client.ts';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import type { PatientIntakeConfig } from '../config/patient-intake-config.ts';
import type { Logger } from '../log.ts';
import type { ModelProvider } from '../model/provider.ts';
import { raiseUrgencyFlag } from './care-team-alert.ts';
import { generateFollowUps } from './follow-up-questions.ts';
import {
  type AskedQuestion,
  answerText,
  baseQuestion,
  type FieldProblem,
  followUpQuestion,
  type InterviewState,
  interviewStateSchema,
  nextBaseItems,
  pendingFollowUps,
  readAnswers,
} from './interview.ts';
import {
  type InvitationClaims,
  LinkSealer,
  newNonce,
  openInvitation,
  sealInvitation,
  visitKey,
} from './invitation-token.ts';
import { ensureInvitation } from './invitations.ts';
import { loadQuestionnaires, type QuestionnaireSet } from './questionnaire.ts';
import { buildQuestionnaireResponse, responseSearch } from './questionnaire-response.ts';
import { type RecordLists, readRecordLists } from './record-lists.ts';
import { RedFlagRules, type Urgency } from './urgency.ts';

/**
 * Pre-visit intake, start to end: an invitation when a visit is booked, the interview page by page, the answers
 * written to the EHR as a QuestionnaireResponse, urgency from the site's red-flag rules (an urgent answer: the
 * patient sees the site's instruction at once and the care team gets a Flag), and the briefing redrafted with
 * the answers. What the HTTP layer renders is described by `IntakePage`; it never sees the record itself.
 */
export type LinkProblem = 'forged' | 'expired' | 'used' | 'visit-closed' | 'unavailable';

export type IntakePage =
  | { kind: 'problem'; problem: LinkProblem; language: string }
  | {
      kind: 'step';
      language: string;
      title: string;
      questions: AskedQuestion[];
      answers: InterviewState['answers'];
      problems: Record<string, FieldProblem>;
      state: string;
      /** The record's lists for the patient to confirm, only where the site allows it. */
      recordLists?: Pick<RecordLists, 'medications' | 'allergies'>;
      first: boolean;
    }
  | { kind: 'done'; language: string; urgency: Urgency['level']; instruction?: string };

export interface PatientIntakeOptions {
  config: PatientIntakeConfig;
  secret: string;
  fhir: FhirClient;
  publicUrl: string;
  logger: Logger;
  /** With a model: adaptive follow-up questions. */
  model?: { provider: ModelProvider; prompts: PromptLibrary };
  /** Called once the answers are in the EHR (the briefing is redrafted with them). */
  onAnswersWritten?: (written: {
    patientId: string;
    /** Absent when the visit is an Appointment no Encounter names yet. */
    encounterId?: string;
    responseId: string;
    urgency: Urgency;
  }) => Promise<void>;
  now?: () => Date;
}

const closedStatuses: Encounter['status'][] = ['cancelled', 'entered-in-error', 'finished'];
/** Appointments whose visit is over or will not happen: their links no longer open. */
const closedAppointmentStatuses: Appointment['status'][] = [
  'cancelled',
  'noshow',
  'entered-in-error',
  'fulfilled',
];

export type InvitationOutcome = 'invited' | 'already-invited' | 'not-a-booking';

/** The Appointment's patient, when one takes part (a participant whose actor is a Patient and who has not declined). */
function appointmentPatient(appointment: Appointment): string | undefined {
  const participant = appointment.participant?.find(
    (candidate) =>
      /^Patient\/[A-Za-z0-9\-.]{1,64}$/.test(candidate.actor?.reference ?? '') &&
      candidate.status !== 'declined',
  );
  return participant?.actor?.reference?.slice('Patient/'.length);
}

/** A link's claims once opened, with the visit's Encounter: the bound one, or the one naming the Appointment. */
type VisitClaims = InvitationClaims & { visitEncounterId?: string };

export class PatientIntake {
  readonly questionnaires: QuestionnaireSet;
  readonly redFlags: RedFlagRules;
  readonly #options: PatientIntakeOptions;
  readonly #linkSealer: LinkSealer;
  readonly #stateSealer: LinkSealer;
  readonly #now: () => Date;

  constructor(options: PatientIntakeOptions) {
    this.#options = options;
    const directory = path.resolve(options.config.directory);
    this.questionnaires = loadQuestionnaires(directory, options.config.defaultLanguage);
    this.redFlags = RedFlagRules.load(path.join(directory, 'red-flags.yaml'));
    this.#linkSealer = new LinkSealer(options.secret, 'patient-intake-link');
    // Another key for the interview state: a state can never pass for a link, nor a link for a state.
    this.#stateSealer = new LinkSealer(options.secret, 'patient-intake-state');
    this.#now = options.now ?? (() => new Date());
  }

  /** On a visit event: invite when the Encounter's status books a visit (idempotent per visit). */
  async inviteForEncounter(encounterId: string): Promise<InvitationOutcome> {
    const encounter = await this.#readIfPresent<Encounter>('Encounter', encounterId);
    if (!encounter) return 'not-a-booking';
    if (!(this.#options.config.inviteOnStatuses as string[]).includes(encounter.status))
      return 'not-a-booking';
    const patientId = /^Patient\/([^/]+)$/.exec(encounter.subject?.reference ?? '')?.[1];
    if (!patientId) return 'not-a-booking';
    const appointments = (encounter.appointment ?? [])
      .map((reference) => reference.reference ?? '')
      .filter((reference) => /^Appointment\/[A-Za-z0-9\-.]{1,64}$/.test(reference));
    return this.#invite({ patientId, encounterId, alsoKnownAs: appointments });
  }

  /**
   * On an Appointment event (the notification is a hint: the Appointment is read again): invite when it is
   * booked, a patient takes part and it starts in the future. Idempotent per Appointment.
   */
  async inviteForAppointment(appointmentId: string): Promise<InvitationOutcome> {
    const appointment = await this.#readIfPresent<Appointment>('Appointment', appointmentId);
    if (appointment?.status !== 'booked') return 'not-a-booking';
    const start = Date.parse(appointment.start ?? '');
    if (!Number.isFinite(start) || start <= this.#now().getTime()) return 'not-a-booking';
    const patientId = appointmentPatient(appointment);
    if (!patientId) return 'not-a-booking';
    // An Encounter already made for this Appointment may have been invited first: the same visit, not again.
    const encounters = await this.#options.fhir.search<Encounter>('Encounter', {
      appointment: `Appointment/${appointmentId}`,
    });
    const alsoKnownAs = encounters
      .filter(
        (encounter) =>
          encounter.id &&
          encounter.subject?.reference === `Patient/${patientId}` &&
          (encounter.appointment ?? []).some(
            (reference) => reference.reference === `Appointment/${appointmentId}`,
          ),
      )
      .map((encounter) => `Encounter/${encounter.id}`);
    return this.#invite({ patientId, appointmentId, alsoKnownAs });
  }

  /**
   * A fresh link for a visit of a patient who signed in through the portal (standalone SMART launch): the visit
   * is read again with the service's token and must still be this patient's booked one. No invitation is
   * written: the patient is here already. Undefined when the visit does not qualify.
   */
  async linkForSignedInPatient(
    patientId: string,
    visit: { encounterId: string } | { appointmentId: string },
  ): Promise<string | undefined> {
    const patient = `Patient/${patientId}`;
    if ('encounterId' in visit) {
      const encounter = await this.#readIfPresent<Encounter>('Encounter', visit.encounterId);
      if (
        !encounter ||
        encounter.subject?.reference !== patient ||
        !(this.#options.config.inviteOnStatuses as string[]).includes(encounter.status)
      )
        return undefined;
    } else {
      const appointment = await this.#readIfPresent<Appointment>('Appointment', visit.appointmentId);
      const start = Date.parse(appointment?.start ?? '');
      if (
        appointment?.status !== 'booked' ||
        appointmentPatient(appointment) !== patientId ||
        !(start > this.#now().getTime())
      )
        return undefined;
    }
    const token = sealInvitation(this.#linkSealer, {
      patientId,
      ...visit,
      expiresAt: this.#now().getTime() + this.#options.config.linkLifetimeHours * 3_600_000,
      nonce: newNonce(),
    });
    return `${this.#options.publicUrl}/intake/${token}`;
  }

  async #readIfPresent<T extends Encounter | Appointment>(type: T['resourceType'], id: string) {
    try {
      return await this.#options.fhir.read<T>(type, id);
    } catch (error) {
      if (error instanceof OperationOutcomeError && (error.status === 404 || error.status === 410))
        return undefined;
      throw error;
    }
  }

  async #invite(visit: Parameters<typeof ensureInvitation>[0]): Promise<InvitationOutcome> {
    const result = await ensureInvitation(visit, {
      fhir: this.#options.fhir,
      sealer: this.#linkSealer,
      questionnaires: this.questionnaires,
      identifierSystem: this.#options.config.identifierSystem,
      publicUrl: this.#options.publicUrl,
      linkLifetimeHours: this.#options.config.linkLifetimeHours,
      now: this.#now,
    });
    if (result.created)
      this.#options.logger.info(
        {
          ...(visit.encounterId
            ? { encounterId: visit.encounterId }
            : { appointmentId: visit.appointmentId }),
          communicationId: result.communication.id,
        },
        'intake-invitation-written',
      );
    return result.created ? 'invited' : 'already-invited';
  }

  /** What the link opens to: the first page, or why not. */
  async start(token: string): Promise<IntakePage> {
    const opened = await this.#openLink(token);
    if ('problem' in opened) return opened.problem;
    const state: InterviewState = {
      nonce: opened.claims.nonce,
      language: opened.language,
      answers: {},
      asked: [],
      followUps: [],
      followUpsGenerated: false,
    };
    return this.#stepPage(state, opened.claims, {}, true);
  }

  /** One page's answers in; the next page, or the end. */
  async submit(token: string, form: Record<string, unknown>): Promise<IntakePage> {
    const opened = await this.#openLink(token);
    if ('problem' in opened) return opened.problem;
    const { claims } = opened;
    const sealedState = typeof form.state === 'string' ? form.state : '';
    const parsedState = interviewStateSchema.safeParse(this.#stateSealer.open(sealedState));
    if (!parsedState.success || parsedState.data.nonce !== claims.nonce)
      return { kind: 'problem', problem: 'forged', language: opened.language };
    const state = parsedState.data;
    const questions = this.#currentQuestions(state);
    if (questions.length === 0) return this.#finish(state, claims);
    const { answers, problems } = readAnswers(questions, form);
    if (Object.keys(problems).length > 0)
      return this.#stepPage(state, claims, problems, state.asked.length === 0, {
        ...state.answers,
        ...answers,
      });

    const next: InterviewState = {
      ...state,
      answers: { ...state.answers, ...answers },
      asked: [...state.asked, ...questions.map((question) => question.linkId)],
    };
    // An urgent answer ends the interview at once: the patient is told what to do now, the team is flagged.
    if (this.redFlags.assess(this.#response(next, claims)).level === 'urgent')
      return this.#finish(next, claims);
    if (this.#currentQuestions(next).length === 0 && !next.followUpsGenerated && this.#options.model) {
      next.followUpsGenerated = true;
      next.followUps = await this.#followUps(next, claims);
    }
    if (this.#currentQuestions(next).length === 0) return this.#finish(next, claims);
    return this.#stepPage(next, claims, {}, false);
  }

  #currentQuestions(state: InterviewState): AskedQuestion[] {
    const cap = this.#options.config.maxAnswerCharacters;
    const base = nextBaseItems(this.questionnaires.get(state.language), state);
    if (base.length > 0) return base.map((item) => baseQuestion(item, cap));
    return pendingFollowUps(state).map((question) => followUpQuestion(question, cap));
  }

  async #stepPage(
    state: InterviewState,
    claims: VisitClaims,
    problems: Record<string, FieldProblem>,
    first: boolean,
    shownAnswers: InterviewState['answers'] = state.answers,
  ): Promise<IntakePage> {
    const questions = this.#currentQuestions(state);
    const asksMedicines = questions.some((question) =>
      ['takes-medicines', 'has-allergies'].includes(question.linkId),
    );
    let recordLists: Pick<RecordLists, 'medications' | 'allergies'> | undefined;
    if (this.#options.config.showRecordLists && asksMedicines) {
      const lists = await readRecordLists(this.#options.fhir, claims.patientId);
      recordLists = { medications: lists.medications, allergies: lists.allergies };
    }
    return {
      kind: 'step',
      language: state.language,
      title: this.questionnaires.get(state.language).title,
      questions,
      answers: shownAnswers,
      problems,
      state: this.#stateSealer.seal(state),
      ...(recordLists ? { recordLists } : {}),
      first,
    };
  }

  async #followUps(state: InterviewState, claims: VisitClaims) {
    const model = this.#options.model;
    if (!model || this.#options.config.maxFollowUpQuestions === 0) return [];
    const questionnaire = this.questionnaires.get(state.language);
    const answered = questionnaire.item
      .filter((item) => state.answers[item.linkId])
      .map((item) => ({ question: item.text, answer: answerText(state.answers[item.linkId] as never) }));
    try {
      const record = await readRecordLists(this.#options.fhir, claims.patientId);
      return await generateFollowUps(
        {
          answered,
          record,
          language: state.language,
          maxQuestions: this.#options.config.maxFollowUpQuestions,
        },
        { provider: model.provider, prompts: model.prompts, logger: this.#options.logger },
      );
    } catch (error) {
      // Follow-ups are a help, not a condition: the patient's answers go to the EHR without them.
      this.#options.logger.warn({ error: (error as Error).name }, 'intake-follow-ups-unavailable');
      return [];
    }
  }

  #response(state: InterviewState, claims: VisitClaims): QuestionnaireResponse {
    return buildQuestionnaireResponse({
      questionnaire: this.questionnaires.get(state.language),
      followUps: state.followUps,
      answers: state.answers,
      patientId: claims.patientId,
      visitKey: visitKey(claims),
      ...(claims.visitEncounterId ? { encounterId: claims.visitEncounterId } : {}),
      ...(claims.appointmentId ? { appointmentId: claims.appointmentId } : {}),
      identifierSystem: this.#options.config.identifierSystem,
      authored: this.#now(),
    });
  }

  async #finish(state: InterviewState, claims: VisitClaims): Promise<IntakePage> {
    const { fhir, config, logger } = this.#options;
    const response = this.#response(state, claims);
    const written = await fhir.create(response, {
      ifNoneExist: responseSearch(config.identifierSystem, visitKey(claims)),
    });
    // The conditional create found answers already given: this link has been used.
    if (!written.created) return { kind: 'problem', problem: 'used', language: state.language };
    const responseId = written.resource.id as string;
    const urgency = this.redFlags.assess(written.resource);
    // Soon or urgent: recorded for the care team (and read back by the briefing and the CDS urgency card).
    const encounterId = claims.visitEncounterId;
    const visit = encounterId ? { encounterId } : { appointmentId: claims.appointmentId };
    await raiseUrgencyFlag(fhir, {
      patientId: claims.patientId,
      visitKey: visitKey(claims),
      ...(encounterId ? { encounterId } : {}),
      responseId,
      urgency,
      identifierSystem: config.identifierSystem,
      now: this.#now(),
    });
    logger.info(
      {
        ...visit,
        responseId,
        urgency: urgency.level,
        rules: urgency.reasons.map((reason) => reason.ruleId),
      },
      'intake-answers-written',
    );
    try {
      await this.#options.onAnswersWritten?.({
        patientId: claims.patientId,
        ...(encounterId ? { encounterId } : {}),
        responseId,
        urgency,
      });
    } catch (error) {
      // The answers are in the EHR; a briefing that could not be queued again must not undo the patient's page.
      logger.error({ ...visit, error: (error as Error).message }, 'intake-briefing-refresh-failed');
    }
    return {
      kind: 'done',
      language: state.language,
      urgency: urgency.level,
      ...(urgency.level === 'urgent' ? { instruction: this.#instruction(state.language) } : {}),
    };
  }

  #instruction(language: string): string {
    const instructions = this.#options.config.urgentInstruction;
    return (
      instructions[language] ??
      instructions[this.#options.config.defaultLanguage] ??
      Object.values(instructions)[0] ??
      ''
    );
  }

  async #openLink(
    token: string,
  ): Promise<
    { claims: VisitClaims; language: string } | { problem: Extract<IntakePage, { kind: 'problem' }> }
  > {
    const fallbackLanguage = this.questionnaires.defaultLanguage;
    const opened = openInvitation(this.#linkSealer, token, this.#now());
    if (!opened.ok)
      return { problem: { kind: 'problem', problem: opened.problem, language: fallbackLanguage } };
    const claims = opened.value;
    const { fhir, config } = this.#options;
    const [patient, visit, answered] = await Promise.all([
      fhir.read<Patient>('Patient', claims.patientId),
      this.#visitOf(claims),
      fhir.searchPage('QuestionnaireResponse', {
        ...Object.fromEntries(new URLSearchParams(responseSearch(config.identifierSystem, visitKey(claims)))),
        _count: 1,
      }),
    ]);
    const language = this.questionnaires.languageFor(patient);
    if (!visit.open) return { problem: { kind: 'problem', problem: 'visit-closed', language } };
    if ((answered.entry ?? []).some((entry) => entry.resource?.resourceType === 'QuestionnaireResponse'))
      return { problem: { kind: 'problem', problem: 'used', language } };
    return {
      claims: { ...claims, ...(visit.encounterId ? { visitEncounterId: visit.encounterId } : {}) },
      language,
    };
  }

  /**
   * Whether the link's visit is still ahead for this patient, and its Encounter: the bound one, or for an
   * Appointment the Encounter that names it (`Encounter.appointment`), once the EHR has made one.
   */
  async #visitOf(claims: InvitationClaims): Promise<{ open: boolean; encounterId?: string }> {
    const { fhir } = this.#options;
    const patient = `Patient/${claims.patientId}`;
    if (claims.encounterId) {
      const encounter = await fhir.read<Encounter>('Encounter', claims.encounterId);
      const open = encounter.subject?.reference === patient && !closedStatuses.includes(encounter.status);
      return { open, encounterId: claims.encounterId };
    }
    const appointmentId = claims.appointmentId as string;
    const [appointment, encounters] = await Promise.all([
      fhir.read<Appointment>('Appointment', appointmentId),
      fhir.search<Encounter>('Encounter', { appointment: `Appointment/${appointmentId}` }),
    ]);
    const open =
      appointmentPatient(appointment) === claims.patientId &&
      !closedAppointmentStatuses.includes(appointment.status);
    const encounter = encounters.find(
      (candidate) =>
        candidate.subject?.reference === patient &&
        candidate.id &&
        !closedStatuses.includes(candidate.status) &&
        (candidate.appointment ?? []).some(
          (reference) => reference.reference === `Appointment/${appointmentId}`,
        ),
    );
    return { open, ...(encounter?.id ? { encounterId: encounter.id } : {}) };
  }
}
