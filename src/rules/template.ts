/**
 * `{{name}}` and `{{name|fallback}}` placeholders in a rule's summary, suggested action and urgency
 * reason. Deliberately tiny: no logic in templates, logic lives in the rule's FHIRPath.
 */
const placeholder = /\{\{\s*([a-z0-9][a-z0-9-]*)\s*(?:\|([^}]*))?\}\}/gi;

/** Values every template can use without declaring them. */
export const builtInTemplateValues = ['age', 'gender'] as const;

export function templateNames(template: string): string[] {
  return [...template.matchAll(placeholder)].map((match) => match[1]);
}

export function fillTemplate(template: string, values: Record<string, string | undefined>): string {
  return template.replace(placeholder, (_match, name: string, fallback: string | undefined) => {
    const value = values[name];
    return value !== undefined && value !== '' ? value : (fallback?.trim() ?? 'unknown');
  });
}
