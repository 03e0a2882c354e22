import { type CitationVerification, citationsIn, removalCounts } from '../../agents/citation-verifier.ts';
import { withheldNotice } from '../../agents/clinical-content-policy.ts';
import { suggestedActionsHeading } from '../../agents/output-schemas.ts';
import { type PatientRecord, recordResources } from '../../fhir/patient-record.ts';
import { containsTerm, type FactCategory, type LabelledFact, normalizeText } from './labelled-set.ts';

/**
 * What one draft is worth, measured mechanically against the labelled set and the record the run read:
 * which facts it carried (a line holding all the fact's terms and citing its source, or a resource that
 * holds them all), whether
 * each statement's cited resources hold the statement's key terms and values, what the verifier took
 * out, and citations of another patient's resources in what the engine wrote.
 */
export interface DraftScore {
  facts: { category: FactCategory; recalled: boolean }[];
  /** Statements (cited lines outside the suggested actions) checked, and those their sources support. */
  statements: { checked: number; supported: number };
  removedByVerifier: ReturnType<typeof removalCounts>;
  /** Citations, in the engine's own text, of resources that belong to another patient. */
  wrongPatientCitations: number;
  /** The same in the verified text that would be written: must always be 0. */
  wrongPatientCitationsWritten: number;
  /** Nudges the rules decided, those the written draft carries (`rule <id>`), and rule tags no rule decided. */
  nudges: { expected: number; present: number; extra: number };
}

const citationText = /\[[A-Z][A-Za-z]+\/[^\]]*\]/g;
const headingLine = /^#{1,6}\s/;

/** Words that carry no claim of their own: the drafts' template words and common English. */
const connectiveWords = new Set(
  `about above after again also among been before being below between both but came could does done each
  from further have having here into its just last latest made more most next noted note notes once only
  other over own same should since some still such than that their them then there these they this those
  through today under until upon very was were what when where which while will with within would your
  active onset record recorded recent results result encounter encounters patient plan assessment summary
  problems problem medications medication allergies allergy finding findings continue continued stable
  follow followup visit visits days daily months weeks year years review reviewed known current currently
  previous prior none recorded paragraph retrieved orders`.split(/\s+/),
);

/** Numbers (dates whole) and the words of four letters or more that are not connective. */
export function keyTermsOf(statement: string): { values: string[]; words: string[] } {
  const text = normalizeText(statement.replace(citationText, ' ').replace(/^[-*\s]+/, ''));
  // Digits inside a word (A1c, kg/m2) are part of its name, not a value.
  const values = [...text.matchAll(/(?<![a-z0-9.])(?:\d{4}-\d{2}-\d{2}|\d+(?:\.\d+)?)(?![a-z0-9])/g)].map(
    (match) => match[0],
  );
  const words = [...text.replace(/\d{4}-\d{2}-\d{2}/g, ' ').matchAll(/[a-z][a-z-]{3,}/g)]
    .map((match) => match[0].replace(/-+$/, ''))
    .filter((word) => !connectiveWords.has(word));
  return { values: [...new Set(values)], words: [...new Set(words)] };
}

/** What a resource says, as text a statement's terms are looked up in: its JSON and, for notes, the note. */
export function resourceTexts(record: PatientRecord): Map<string, string> {
  const texts = new Map<string, string>();
  for (const resource of recordResources(record)) {
    texts.set(`${resource.resourceType}/${resource.id}`, normalizeText(JSON.stringify(resource)));
  }
  for (const note of record.notes) {
    texts.set(
      note.reference,
      `${texts.get(note.reference) ?? ''} ${normalizeText(`${note.title} ${note.text}`)}`,
    );
  }
  return texts;
}

function supported(statement: string, citations: string[], texts: Map<string, string>): boolean {
  const sourceText = citations.map((citation) => texts.get(citation) ?? '').join(' ');
  if (sourceText.trim() === '') return false;
  const { values, words } = keyTermsOf(statement);
  return (
    values.every((value) => containsTerm(sourceText, value)) &&
    words.every((word) => sourceText.includes(word))
  );
}

/** `rule <id>` tags in the suggested actions section: how drafts name the rule behind a nudge. */
function ruleTags(text: string): Set<string> {
  return new Set([...text.matchAll(/\brule (\S+) v\S+\)/g)].map((match) => match[1]));
}

export function scoreDraft(input: {
  record: PatientRecord;
  facts: readonly LabelledFact[];
  /** The engine's text before verification. */
  engineText: string;
  /** The draft kind's template heading lines (DraftResult.headings). */
  headings: readonly string[];
  verification: CitationVerification;
  /** `Type/id` -> patient id of every resource in the evaluated population. */
  owners: ReadonlyMap<string, string>;
  expectedRuleIds: readonly string[];
}): DraftScore {
  const { record, verification } = input;
  const patientId = record.patient.id ?? '';
  const lines = verification.text.split('\n');
  const normalizedLines = lines.map((line) => ({ text: normalizeText(line), citations: citationsIn(line) }));
  const texts = resourceTexts(record);
  // A line carries a fact when it says all the fact's terms and cites the fact's source, or cites a
  // resource that says all of them itself (a result quoted from the note that reports it).
  const citesSupport = (fact: LabelledFact, citations: string[]) =>
    fact.sources.length === 0 ||
    citations.some(
      (citation) =>
        fact.sources.includes(citation) ||
        (fact.category !== 'planted' &&
          fact.category !== 'nudge' &&
          fact.terms.every((term) => containsTerm(texts.get(citation) ?? '', term))),
    );
  const facts = input.facts.map((fact) => ({
    category: fact.category,
    recalled: normalizedLines.some(
      (line) =>
        fact.terms.every((term) => containsTerm(line.text, term)) && citesSupport(fact, line.citations),
    ),
  }));

  let checked = 0;
  let supportedCount = 0;
  let inSuggestions = false;
  const templateHeadings = new Set(input.headings.map((heading) => heading.trim()));
  const withheld = withheldNotice(record);
  for (const line of lines) {
    const trimmed = line.trim();
    // Headings: markdown ones, and the exact heading lines of the draft kind's template (`Suggested actions:`).
    if (headingLine.test(trimmed) || templateHeadings.has(trimmed)) {
      inSuggestions = trimmed.replace(/^#+\s*/, '').replace(/:$/, '') === suggestedActionsHeading;
      continue;
    }
    const citations = citationsIn(line);
    // The service's own notice of what the site's policy withheld states counts, not patient data.
    if (withheld !== undefined && line.trim() === withheld.trim()) continue;
    // Suggested actions rest on rules, not on the cited data's wording: nudge agreement measures them.
    if (citations.length === 0 || inSuggestions) continue;
    checked += 1;
    if (supported(line, citations, texts)) supportedCount += 1;
  }

  const ofAnotherPatient = (citation: string) => {
    if (citation.startsWith('Patient/')) return citation !== `Patient/${patientId}`;
    const owner = input.owners.get(citation);
    return owner !== undefined && owner !== patientId;
  };
  const otherPatientRemovals = verification.removed.filter((entry) => entry.reason === 'other-patient');
  const wrongInEngineText = citationsIn(input.engineText).filter(ofAnotherPatient).length;
  const written = ruleTags(verification.text);
  const expected = new Set(input.expectedRuleIds);
  return {
    facts,
    statements: { checked, supported: supportedCount },
    removedByVerifier: removalCounts(verification),
    // The verifier's own finding counts too: a resource the server sent of another patient, outside the population.
    wrongPatientCitations: Math.max(
      wrongInEngineText,
      otherPatientRemovals.reduce((sum, entry) => sum + entry.citations.length, 0),
    ),
    wrongPatientCitationsWritten: citationsIn(verification.text).filter(ofAnotherPatient).length,
    nudges: {
      expected: expected.size,
      present: [...expected].filter((ruleId) => written.has(ruleId)).length,
      extra: [...written].filter((ruleId) => !expected.has(ruleId)).length,
    },
  };
}
