import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { JobQueue } from './queue/job-queue.ts';

/**
 * Prometheus metrics (prom-client), served at GET /metrics: events received by source and outcome,
 * queue depth, job attempts and outcomes, processing durations, gaps, resets and reconciliations.
 * Labels carry sources and outcomes only: never ids of patients or encounters.
 */
export interface ServiceMetrics {
  registry: Registry;
  eventsReceived: Counter<'source' | 'outcome'>;
  jobAttempts: Counter<'outcome'>;
  jobDuration: Histogram<'outcome'>;
  /** What finished jobs came to: draft-created, skipped:too-old, skipped:patient-deceased, ... */
  jobResults: Counter<'result'>;
  gapsDetected: Counter<'subscription_kind'>;
  resetsDetected: Counter;
  reconciliations: Counter<'reason' | 'outcome'>;
  notificationsRejected: Counter<'reason'>;
  /** The serving rule set (1 on its fingerprint), its load time, and every rule's version: which logic runs now. */
  ruleSetInfo: Gauge<'fingerprint'>;
  ruleSetLoadedAt: Gauge;
  ruleInfo: Gauge<'rule_id' | 'version' | 'enabled' | 'mode'>;
  ruleSetReloads: Counter<'outcome'>;
}

/** What the rule-set metrics read of a serving set (kept structural so metrics do not import the rules engine). */
export interface ServingRuleSet {
  fingerprint: string;
  loadedAt: Date;
  rules: { id: string; version: string; enabled: boolean; mode: string }[];
}

/** A set started serving (loaded) or a reload was refused (the last set keeps serving). */
export function observeRuleSet(
  metrics: ServiceMetrics,
  change: { outcome: 'loaded'; ruleSet: ServingRuleSet } | { outcome: 'refused' },
): void {
  metrics.ruleSetReloads.inc({ outcome: change.outcome });
  if (change.outcome !== 'loaded') return;
  const { ruleSet } = change;
  metrics.ruleSetInfo.reset();
  metrics.ruleSetInfo.set({ fingerprint: ruleSet.fingerprint }, 1);
  metrics.ruleSetLoadedAt.set(ruleSet.loadedAt.getTime() / 1000);
  metrics.ruleInfo.reset();
  for (const rule of ruleSet.rules) {
    metrics.ruleInfo.set(
      { rule_id: rule.id, version: rule.version, enabled: String(rule.enabled), mode: rule.mode },
      1,
    );
  }
}

export function createMetrics(queue?: JobQueue): ServiceMetrics {
  const registry = new Registry();
  const eventsReceived = new Counter({
    name: 'ehr_agent_intake_events_total',
    help: 'Events received, by source and what became of them (queued, duplicate, ignored, reconcile).',
    labelNames: ['source', 'outcome'] as const,
    registers: [registry],
  });
  const jobAttempts = new Counter({
    name: 'ehr_agent_job_attempts_total',
    help: 'Job attempts by outcome (done, retry, failed).',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  const jobDuration = new Histogram({
    name: 'ehr_agent_job_duration_seconds',
    help: 'Time one job attempt took, by outcome.',
    labelNames: ['outcome'] as const,
    buckets: [0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300],
    registers: [registry],
  });
  const jobResults = new Counter({
    name: 'ehr_agent_job_results_total',
    help: 'Finished jobs by result (draft-created, draft-exists, skipped:too-old, skipped:patient-deceased, ...).',
    labelNames: ['result'] as const,
    registers: [registry],
  });
  const gapsDetected = new Counter({
    name: 'ehr_agent_subscription_gaps_detected_total',
    help: 'Missing subscription event numbers detected.',
    labelNames: ['subscription_kind'] as const,
    registers: [registry],
  });
  const resetsDetected = new Counter({
    name: 'ehr_agent_subscription_resets_detected_total',
    help: 'Subscription event counters that went backwards.',
    registers: [registry],
  });
  const reconciliations = new Counter({
    name: 'ehr_agent_reconciliations_total',
    help: 'Polling reconciliations run, by reason and outcome.',
    labelNames: ['reason', 'outcome'] as const,
    registers: [registry],
  });
  const notificationsRejected = new Counter({
    name: 'ehr_agent_notifications_rejected_total',
    help: 'Notifications refused, by reason (unauthenticated, rate-limited, malformed).',
    labelNames: ['reason'] as const,
    registers: [registry],
  });
  const ruleSetInfo = new Gauge({
    name: 'ehr_agent_rule_set_info',
    help: 'The rule set serving now: 1 on its fingerprint.',
    labelNames: ['fingerprint'] as const,
    registers: [registry],
  });
  const ruleSetLoadedAt = new Gauge({
    name: 'ehr_agent_rule_set_loaded_timestamp_seconds',
    help: 'When the serving rule set was loaded (Unix time).',
    registers: [registry],
  });
  const ruleInfo = new Gauge({
    name: 'ehr_agent_rule_info',
    help: 'Each rule of the serving set: 1 on its id, version, enabled flag and mode.',
    labelNames: ['rule_id', 'version', 'enabled', 'mode'] as const,
    registers: [registry],
  });
  const ruleSetReloads = new Counter({
    name: 'ehr_agent_rule_set_reloads_total',
    help: 'Rule sets that started serving (loaded) and reloads refused for errors (refused).',
    labelNames: ['outcome'] as const,
    registers: [registry],
  });
  if (queue) {
    new Gauge({
      name: 'ehr_agent_queue_jobs',
      help: 'Jobs in the queue by status.',
      labelNames: ['status'] as const,
      registers: [registry],
      async collect() {
        const counts = await queue.counts();
        for (const [status, total] of Object.entries(counts)) this.set({ status }, total);
      },
    });
  }
  return {
    registry,
    eventsReceived,
    jobAttempts,
    jobDuration,
    jobResults,
    gapsDetected,
    resetsDetected,
    reconciliations,
    notificationsRejected,
    ruleSetInfo,
    ruleSetLoadedAt,
    ruleInfo,
    ruleSetReloads,
  };
}
