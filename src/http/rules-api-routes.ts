import { Router } from 'express';
import type { RuleSet } from '../rules/rule-set.ts';
import { summarizeRuleSet } from '../rules/rule-set.ts';
import { adminBearerRequired } from './notify-routes.ts';

/**
 * `GET /api/rules` for operators: the rule set serving now (fingerprint, load time, each rule's id,
 * version, title, enabled and mode), so a reload can be confirmed without reading logs. Behind the
 * admin secret like the other operator APIs: rule titles say what the site screens for.
 */
export function rulesApiRouter(options: { adminSecret: string; ruleSet: () => RuleSet }): Router {
  const router = Router();
  router.use(adminBearerRequired(options.adminSecret));
  router.get('/', (_request, response) => {
    const summary = summarizeRuleSet(options.ruleSet());
    response.json({ ...summary, loadedAt: summary.loadedAt.toISOString() });
  });
  return router;
}
