import type { ConditionKey, MedicationKey } from './clinical-codes.ts';
import { conditionCodes, medicationCodes } from './clinical-codes.ts';
import type { SeededRandom } from './seeded-random.ts';

/**
 * Free-text progress notes, sectioned the way clinicians write them (SOAP, with a few house styles),
 * that refer to the patient's own problems, medications and numbers as of the visit date.
 */
export interface LatestResult {
  value: number;
  date: string;
}

export interface NoteContext {
  date: string;
  visitKind: string;
  reason?: string;
  ageYears: number;
  gender: 'female' | 'male';
  conditions: ConditionKey[];
  medications: MedicationKey[];
  bloodPressure?: { systolic: number; diastolic: number };
  bmi?: number;
  results: Partial<Record<'hba1c' | 'potassium' | 'creatinine' | 'ldl' | 'phq9', LatestResult>>;
  /** What was done at this visit besides talking (labs drawn, vaccine given, screening). */
  doneToday: string[];
  /** Notes after the first at one visit are short follow-ups (telephone, nursing). */
  followUp: boolean;
  /** A statement with a known answer, written into this note's plan (see plantedStatements). */
  planted?: string;
}

/**
 * Statements planted in specific notes so an evaluation knows what a good draft must carry over from
 * free text: each with the terms a draft line must contain to count as having said it. Written without
 * the random stream, so a generated patient is otherwise the same with or without them.
 */
export interface PlantedStatement {
  key: string;
  text: string;
  terms: string[];
}

export const plantedStatements: readonly PlantedStatement[] = [
  {
    key: 'start-empagliflozin',
    text: 'Plan: start empagliflozin 10 mg daily.',
    terms: ['empagliflozin', '10 mg'],
  },
  { key: 'lisinopril-cough', text: 'Lisinopril stopped because of cough.', terms: ['lisinopril', 'cough'] },
  {
    key: 'cardiology-referral',
    text: 'Referred to cardiology for palpitations.',
    terms: ['cardiology', 'palpitations'],
  },
  {
    key: 'atorvastatin-increase',
    text: 'Atorvastatin increased to 40 mg daily for LDL above goal.',
    terms: ['atorvastatin', '40 mg'],
  },
  {
    key: 'sertraline-nausea',
    text: 'Sertraline stopped because of nausea.',
    terms: ['sertraline', 'nausea'],
  },
  {
    key: 'start-vitamin-d',
    text: 'Plan: start vitamin D 1000 units daily.',
    terms: ['vitamin d', '1000 units'],
  },
];

const complaints = [
  'Here for routine follow-up of chronic conditions.',
  'Presents for scheduled follow-up; no new complaints.',
  'Returns for review of labs and medications.',
  'Seen today for a planned check-in.',
  'Follow-up visit. Reports feeling about the same as last time.',
];

const conditionSubjective: Partial<Record<ConditionKey, string[]>> = {
  diabetes: [
    'Checks fasting glucose most mornings, mostly 120s to 160s.',
    'Denies polyuria or polydipsia. Occasional missed metformin doses.',
    'Diet has been inconsistent over the holidays.',
  ],
  hypertension: [
    'Home blood pressure readings mostly in the 130s systolic.',
    'No headaches, chest pain or shortness of breath.',
    'Takes blood pressure medication daily, no side effects reported.',
  ],
  chronicPain: ['Pain 6/10 most days, worse in the evening.', 'Pain limits walking to about two blocks.'],
  lowBackPain: ['Low back pain unchanged, no radiation to the legs, no bowel or bladder symptoms.'],
  anxiety: ['Worry and poor sleep on work days.', 'Anxiety somewhat better with breathing exercises.'],
  depression: ['Mood improved, sleeping better, enjoying hobbies again.', 'Low mood persists some days.'],
  asthma: ['Uses rescue inhaler about once a week.', 'No night-time wheeze.'],
  osteoarthritis: ['Knee stiffness in the morning lasting under 30 minutes.'],
  obesity: ['Working on portion sizes, walking three times a week.'],
};

function formatDate(iso: string): string {
  return iso.slice(0, 10);
}

function resultText(label: string, result: LatestResult | undefined, unit: string): string | undefined {
  return result ? `${label} ${result.value}${unit} (${formatDate(result.date)})` : undefined;
}

function assessmentFor(condition: ConditionKey, context: NoteContext, random: SeededRandom): string {
  const name = conditionCodes[condition].noteName;
  const { results, bloodPressure } = context;
  switch (condition) {
    case 'diabetes': {
      const hba1c = results.hba1c;
      if (!hba1c) return `${name} - no A1c on file, will order.`;
      const atGoal = hba1c.value < 7;
      return `${name} - last A1c ${hba1c.value}% on ${formatDate(hba1c.date)}, ${atGoal ? 'at goal' : 'above goal'}.`;
    }
    case 'hypertension': {
      if (!bloodPressure) return `${name} - no reading today.`;
      const high = bloodPressure.systolic >= 140 || bloodPressure.diastolic >= 90;
      return `${name} - BP ${bloodPressure.systolic}/${bloodPressure.diastolic} today, ${high ? 'above goal' : 'controlled'}.`;
    }
    case 'hyperlipidemia':
      return results.ldl
        ? `${name} - LDL ${results.ldl.value} mg/dL on ${formatDate(results.ldl.date)}.`
        : `${name} - lipid panel pending.`;
    case 'chronicKidneyDisease':
      return results.creatinine
        ? `${name} - creatinine ${results.creatinine.value} mg/dL, ${random.pick(['stable', 'near baseline'])}.`
        : `${name} - renal function to be rechecked.`;
    case 'depression':
      return results.phq9
        ? `${name} - PHQ-9 ${results.phq9.value} on ${formatDate(results.phq9.date)}.`
        : `${name} - symptoms reviewed.`;
    default:
      return `${name} - ${random.pick(['stable', 'unchanged', 'improving', 'chronic, stable'])}.`;
  }
}

function planFor(condition: ConditionKey, context: NoteContext, random: SeededRandom): string {
  const medication = context.medications.find((key) => matchesCondition(key, condition));
  const continueMedication = medication
    ? `Continue ${medicationCodes[medication].product}, ${medicationCodes[medication].sig}.`
    : undefined;
  switch (condition) {
    case 'diabetes':
      return [continueMedication, random.pick(['Recheck A1c in 3 months.', 'Diabetic foot exam done.'])]
        .filter(Boolean)
        .join(' ');
    case 'hypertension':
      return [
        continueMedication,
        random.pick(['Home BP log.', 'Low-salt diet reviewed.', 'Recheck at next visit.']),
      ]
        .filter(Boolean)
        .join(' ');
    case 'chronicPain':
    case 'lowBackPain':
      return [continueMedication, 'Physical therapy exercises; review function at next visit.']
        .filter(Boolean)
        .join(' ');
    default:
      return continueMedication ?? random.pick(['Continue current management.', 'Monitor.', 'No change.']);
  }
}

function matchesCondition(medication: MedicationKey, condition: ConditionKey): boolean {
  const medicationClass = medicationCodes[medication].medicationClass;
  switch (condition) {
    case 'diabetes':
      return medicationClass === 'biguanide' || medicationClass === 'insulin';
    case 'hypertension':
      return ['ace-inhibitor', 'arb', 'calcium-channel-blocker'].includes(medicationClass);
    case 'hyperlipidemia':
      return medicationClass === 'statin';
    case 'chronicPain':
    case 'lowBackPain':
      return medicationClass === 'opioid' || medicationClass === 'anticonvulsant';
    case 'anxiety':
      return medicationClass === 'benzodiazepine';
    case 'depression':
      return medicationClass === 'ssri';
    case 'asthma':
      return medicationClass === 'bronchodilator';
    default:
      return false;
  }
}

function subjective(context: NoteContext, random: SeededRandom): string {
  const sentences = [context.reason ? `Seen for ${context.reason.toLowerCase()}.` : random.pick(complaints)];
  for (const condition of context.conditions) {
    const options = conditionSubjective[condition];
    if (options && random.chance(0.7)) sentences.push(random.pick(options));
  }
  return sentences.join(' ');
}

function objective(context: NoteContext): string {
  const parts: string[] = [];
  if (context.bloodPressure)
    parts.push(`BP ${context.bloodPressure.systolic}/${context.bloodPressure.diastolic} mmHg`);
  if (context.bmi) parts.push(`BMI ${context.bmi} kg/m2`);
  const labs = [
    resultText('A1c', context.results.hba1c, '%'),
    resultText('K', context.results.potassium, ' mmol/L'),
    resultText('Cr', context.results.creatinine, ' mg/dL'),
    resultText('LDL', context.results.ldl, ' mg/dL'),
  ].filter(Boolean);
  const lines = [parts.length ? `Vitals: ${parts.join(', ')}.` : 'Vitals: not taken at this visit.'];
  if (labs.length) lines.push(`Recent labs: ${labs.join('; ')}.`);
  lines.push('General: alert, no acute distress. Heart regular, lungs clear.');
  return lines.join('\n');
}

function followUpNote(context: NoteContext, random: SeededRandom): string {
  const topic = context.conditions.length
    ? conditionCodes[random.pick(context.conditions)].noteName
    : 'general health';
  return [
    `TELEPHONE FOLLOW-UP NOTE`,
    `Date: ${formatDate(context.date)}`,
    '',
    `Subjective: Called to review ${topic.toLowerCase()} after the visit. ${random.pick([
      'Patient reports no new concerns.',
      'Patient had questions about medication timing.',
      'Patient confirms pharmacy pick-up.',
    ])}`,
    `Objective: Telephone contact; no vitals.`,
    `Assessment: ${topic}, no change since visit.`,
    `Plan: ${random.pick(['Keep next scheduled appointment.', 'Call back if symptoms change.', 'Labs as ordered.'])}`,
  ].join('\n');
}

/** Renders one progress note; the wording varies with the random stream, the facts do not. */
export function progressNoteText(context: NoteContext, random: SeededRandom): string {
  if (context.followUp) return followUpNote(context, random);
  const problems = context.conditions.length ? context.conditions : undefined;
  const assessments = problems
    ? problems.map((condition) => assessmentFor(condition, context, random))
    : ['Healthy adult, no chronic problems.'];
  const plans = problems ? problems.map((condition) => planFor(condition, context, random)) : [];
  plans.push(...context.doneToday.map((item) => `${item}.`));
  if (context.planted) plans.push(context.planted);
  if (plans.length === 0) plans.push('Routine preventive care; return in one year.');
  const intro = `${context.ageYears}-year-old ${context.gender} seen for ${context.visitKind}.`;
  const style = random.integer(0, 2);
  const header = [`PROGRESS NOTE`, `Date: ${formatDate(context.date)}`, intro, ''];
  if (style === 0) {
    return [
      ...header,
      'SUBJECTIVE:',
      subjective(context, random),
      '',
      'OBJECTIVE:',
      objective(context),
      '',
      'ASSESSMENT:',
      ...assessments.map((line, index) => `${index + 1}. ${line}`),
      '',
      'PLAN:',
      ...plans.map((line) => `- ${line}`),
    ].join('\n');
  }
  if (style === 1) {
    return [
      ...header,
      `Subjective: ${subjective(context, random)}`,
      `Objective: ${objective(context).replace(/\n/g, ' ')}`,
      `Assessment: ${assessments.join(' ')}`,
      `Plan: ${plans.join(' ')}`,
    ].join('\n');
  }
  return [
    ...header,
    `S: ${subjective(context, random)}`,
    `O: ${objective(context).replace(/\n/g, ' ')}`,
    'A/P:',
    ...assessments.map((line, index) => `${index + 1}. ${line} ${plans[index] ?? ''}`.trimEnd()),
    ...plans.slice(assessments.length).map((line) => `- ${line}`),
  ].join('\n');
}
