import { readFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import type { QuestionnaireResponse } from 'fhir/r4.js';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { urgencyLevels } from '../rules/rule-schema.ts';

/**
 * Red flags in the patient's answers: the informatics team's YAML (config/intake/red-flags.yaml), each rule a
 * FHIRPath expression over the QuestionnaireResponse with HL7's `fhirpath` and its R4 model (as the guideline
 * rules use), compiled at start so a typo stops the service with the rule named. The visit's urgency is the
 * highest level whose rule holds, with every reason that holds at that level or above.
 */
const require = createRequire(import.meta.url);
const fhirpath = require('fhirpath') as typeof import('fhirpath');
const r4Model = require('fhirpath/fhir-context/r4') as import('fhirpath').Model;

export type UrgencyLevel = (typeof urgencyLevels)[number];

const redFlagFileSchema = z
  .object({
    rules: z
      .array(
        z
          .object({
            id: z.string().regex(/^[a-z0-9][a-z0-9-]{1,63}$/),
            level: z.enum(urgencyLevels),
            reason: z.string().min(1).max(200),
            fhirpath: z.string().min(1),
          })
          .strict(),
      )
      .min(1),
  })
  .strict();

export interface UrgencyReason {
  ruleId: string;
  level: UrgencyLevel;
  reason: string;
}

export interface Urgency {
  level: UrgencyLevel;
  reasons: UrgencyReason[];
}

interface CompiledRedFlag extends UrgencyReason {
  holds: (response: QuestionnaireResponse) => boolean;
}

export class RedFlagRules {
  readonly #rules: CompiledRedFlag[];

  constructor(rules: CompiledRedFlag[]) {
    this.#rules = rules;
  }

  static load(file: string): RedFlagRules {
    const parsed = redFlagFileSchema.safeParse(parseYaml(readFileSync(file, 'utf8')));
    if (!parsed.success) {
      const issue = parsed.error.issues[0];
      throw new Error(`${file}: ${issue?.path.join('.')}: ${issue?.message}`);
    }
    const ids = new Set<string>();
    return new RedFlagRules(
      parsed.data.rules.map((rule) => {
        if (ids.has(rule.id)) throw new Error(`${file}: rule ${rule.id} appears twice`);
        ids.add(rule.id);
        let compiled: (resource: unknown) => unknown[];
        try {
          compiled = fhirpath.compile(rule.fhirpath, r4Model) as unknown as (resource: unknown) => unknown[];
        } catch (error) {
          throw new Error(`${file}: rule ${rule.id}: ${(error as Error).message.split('\n')[0]}`);
        }
        return {
          ruleId: rule.id,
          level: rule.level,
          reason: rule.reason,
          holds: (response) => {
            const result = compiled(response);
            return result.length === 1 && result[0] === true;
          },
        };
      }),
    );
  }

  assess(response: QuestionnaireResponse): Urgency {
    const held = this.#rules.filter((rule) => rule.holds(response));
    const rank = (level: UrgencyLevel) => urgencyLevels.indexOf(level);
    const level = held.reduce<UrgencyLevel>(
      (highest, rule) => (rank(rule.level) > rank(highest) ? rule.level : highest),
      'routine',
    );
    return {
      level,
      reasons: held
        .filter((rule) => rank(rule.level) >= rank('soon'))
        .sort((left, right) => rank(right.level) - rank(left.level))
        .map(({ ruleId, level: ruleLevel, reason }) => ({ ruleId, level: ruleLevel, reason })),
    };
  }
}
