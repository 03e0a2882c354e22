import { createHash } from 'node:crypto';
import type { Nudge, VisitUrgency } from './evaluate.ts';

/**
 * Nudges as CDS Hooks 2.0 cards: summary under 140 characters, indicator, source (the guideline),
 * markdown detail with the data that triggered the rule, override reasons, and a `smart` link to the
 * review app. Pure data in, data out; the HTTP side lives in src/http/cds-hooks.ts.
 */
export interface CdsCoding {
  system: string;
  code: string;
  display: string;
}

export interface CdsLink {
  label: string;
  url: string;
  type: 'absolute' | 'smart';
  appContext?: string;
}

/** CDS Hooks 2.0 suggestion: one click creates the proposed resource in the EHR (for the clinician to sign). */
export interface CdsSuggestion {
  label: string;
  uuid: string;
  isRecommended?: boolean;
  actions: { type: 'create'; description: string; resource: Record<string, unknown> }[];
}

export interface CdsCard {
  uuid: string;
  summary: string;
  indicator: 'info' | 'warning' | 'critical';
  detail: string;
  source: { label: string; url: string; topic?: CdsCoding };
  suggestions?: CdsSuggestion[];
  /** Required by CDS Hooks 2.0 whenever suggestions are present. */
  selectionBehavior?: 'at-most-one' | 'any';
  overrideReasons?: CdsCoding[];
  links?: CdsLink[];
}

export const overrideReasonSystem = 'urn:ehr-draft-agent:cds-override-reason';

export const overrideReasons: CdsCoding[] = [
  {
    system: overrideReasonSystem,
    code: 'not-clinically-appropriate',
    display: 'Not clinically appropriate for this patient',
  },
  { system: overrideReasonSystem, code: 'already-done', display: 'Already done or ordered elsewhere' },
  { system: overrideReasonSystem, code: 'patient-declined', display: 'Patient declined' },
  { system: overrideReasonSystem, code: 'will-address-later', display: 'Will address at a later visit' },
  ...[7, 30, 90].map((days) => ({
    system: overrideReasonSystem,
    code: `snooze-${days}d`,
    display: `Not now: remind me in ${days} days`,
  })),
];

/** The days of a "not now" override (`snooze-30d` in our system), which suppression then honours for this patient. */
export function snoozeDays(reason: { system?: string; code?: string } | undefined): number | undefined {
  if (reason?.system !== overrideReasonSystem) return undefined;
  const days = /^snooze-(\d{1,4})d$/.exec(reason.code ?? '')?.[1];
  return days === undefined ? undefined : Number(days);
}

export interface CardContext {
  reviewAppUrl: string;
  patientId: string;
  encounterId?: string;
}

export function nudgeCard(nudge: Nudge, context: CardContext): CdsCard {
  const grade = nudge.guideline.grade ? ` (grade ${nudge.guideline.grade})` : '';
  const lines = [
    `**Suggested action:** ${escapeMarkdown(nudge.suggestedAction)}`,
    '',
    `**Guideline:** [${escapeMarkdown(nudge.guideline.label)}](${nudge.guideline.url})${grade}`,
    '',
    `> ${escapeMarkdown(nudge.guideline.recommendation)}`,
    '',
    `**Based on:** ${nudge.evidence.map((reference) => `\`${reference}\``).join(', ')}`,
  ];
  if (nudge.urgency) {
    lines.push('', `**Visit urgency:** ${nudge.urgency.level} - ${escapeMarkdown(nudge.urgency.reason)}`);
  }
  lines.push('', `_Rule ${nudge.ruleId} ${nudge.ruleVersion}_`);
  return {
    uuid: nudge.id,
    summary: shortSummary(nudge.summary),
    indicator: nudge.severity,
    detail: lines.join('\n'),
    source: { label: nudge.guideline.label, url: nudge.guideline.url },
    ...(nudge.suggestions?.length
      ? {
          suggestions: nudge.suggestions.map((suggestion, index) => ({
            label: suggestion.label,
            uuid: derivedUuid(`${nudge.id}|suggestion|${index}`),
            ...(suggestion.isRecommended !== undefined ? { isRecommended: suggestion.isRecommended } : {}),
            actions: [
              { type: 'create' as const, description: suggestion.label, resource: suggestion.resource },
            ],
          })),
          selectionBehavior: 'at-most-one' as const,
        }
      : {}),
    overrideReasons,
    links: [reviewLink(context, { nudgeId: nudge.id, ruleId: nudge.ruleId })],
  };
}

function derivedUuid(seed: string): string {
  const hex = createHash('sha256').update(seed).digest('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-5${hex.slice(13, 16)}-a${hex.slice(17, 20)}-${hex.slice(20, 32)}`;
}

/** A card for the upcoming visit's urgency when rules raise it above routine, with every reason. */
export function urgencyCard(urgency: VisitUrgency, context: CardContext): CdsCard | undefined {
  if (urgency.level === 'routine') return undefined;
  const uuid = createHash('sha256')
    .update(
      `urgency|${context.patientId}|${context.encounterId ?? ''}|${urgency.reasons.map((reason) => reason.ruleId).join(',')}`,
    )
    .digest('hex');
  const first = urgency.reasons[0];
  return {
    uuid: `${uuid.slice(0, 8)}-${uuid.slice(8, 12)}-5${uuid.slice(13, 16)}-a${uuid.slice(17, 20)}-${uuid.slice(20, 32)}`,
    summary: shortSummary(`Visit urgency: ${urgency.level} - ${first.reason}`),
    indicator: urgency.level === 'urgent' ? 'critical' : 'warning',
    detail: [
      `**Visit urgency: ${urgency.level}**`,
      '',
      ...urgency.reasons.map(
        (reason) => `- ${reason.level}: ${escapeMarkdown(reason.reason)} (rule ${reason.ruleId})`,
      ),
    ].join('\n'),
    source: { label: 'Site appointment prioritisation rules', url: context.reviewAppUrl },
    links: [reviewLink(context, { urgency: urgency.level })],
  };
}

function reviewLink(context: CardContext, extra: Record<string, string>): CdsLink {
  return {
    label: 'Review the draft note',
    url: context.reviewAppUrl,
    type: 'smart',
    appContext: JSON.stringify({ patientId: context.patientId, encounterId: context.encounterId, ...extra }),
  };
}

function shortSummary(summary: string): string {
  return summary.length < 140 ? summary : `${summary.slice(0, 136)}...`;
}

function escapeMarkdown(text: string): string {
  return text.replace(/([\\`*_[\]<>])/g, '\\$1');
}
