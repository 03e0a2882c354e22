import { Command } from 'commander';
import type { ServiceConfig } from '../config/config-schema.ts';
import { loadConfig } from '../config/load-config.ts';
import {
  ensureSubscription,
  findSubscriptions,
  type SubscriptionSpec,
} from '../intake/subscription-manager.ts';
import { createServiceFhirClient } from '../service-fhir-client.ts';
import type { CliIo } from './jobs.ts';
import { runProgram } from './run-program.ts';

/**
 * `subscription`: the service's Subscription on the FHIR server. `list` shows the ones pointing at
 * this service, `check` exits non-zero unless one is active (or requested), `recreate` switches the
 * old ones off and creates a fresh one; `ensure` does what start-up does.
 */
const processIo: CliIo = {
  out: (text) => process.stdout.write(text),
  err: (text) => process.stderr.write(text),
};

export function createSubscriptionProgram(
  options: { io?: CliIo; config?: () => ServiceConfig } = {},
): Command {
  const io = options.io ?? processIo;
  const readConfig = options.config ?? (() => loadConfig());
  const program = new Command('subscription')
    .description("List, check and recreate the service's Subscription on the FHIR server")
    .option('--endpoint <url>', 'notification endpoint (default: publicUrl + /notify)')
    .configureOutput({ writeOut: io.out, writeErr: io.err })
    .exitOverride();

  const context = async () => {
    const config = readConfig();
    if (!config.fhir.baseUrl)
      throw new Error('fhir.baseUrl (FHIR_BASE_URL) is not set: the sandbox needs no Subscription');
    const publicUrl =
      program.opts<{ endpoint?: string }>().endpoint ??
      (config.publicUrl ? `${config.publicUrl.replace(/\/$/, '')}/notify` : undefined);
    if (!publicUrl)
      throw new Error('set publicUrl (PUBLIC_URL) or pass --endpoint: the server must know where to send');
    // The service's own client: the same authentication (SMART Backend Services, static token) as the service.
    const { fhir } = await createServiceFhirClient(config, { fhirBaseUrl: config.fhir.baseUrl });
    const spec: SubscriptionSpec = {
      endpoint: publicUrl,
      mode: config.intake.subscription.mode,
      topic: config.intake.subscription.topic,
      criteria: config.intake.subscription.criteria,
      payload: config.intake.subscription.payload,
      heartbeatSeconds: config.intake.subscription.heartbeatSeconds,
      secret: config.notify.secret,
    };
    return { fhir, spec };
  };
  const describe = (subscription: {
    id?: string;
    status?: string;
    criteria?: string;
    channel?: { endpoint?: string };
  }) =>
    `${subscription.id}\t${subscription.status}\t${subscription.criteria}\t${subscription.channel?.endpoint}\n`;

  program
    .command('list')
    .description('subscriptions on the server that point at this service')
    .action(async () => {
      const { fhir, spec } = await context();
      for (const subscription of await findSubscriptions(fhir, spec)) io.out(describe(subscription));
    });

  program
    .command('check')
    .description('exit 0 when an active or requested subscription exists, 1 otherwise')
    .action(async () => {
      const { fhir, spec } = await context();
      const found = await findSubscriptions(fhir, spec);
      const usable = found.find(
        (subscription) => subscription.status === 'active' || subscription.status === 'requested',
      );
      if (usable) io.out(`ok\t${describe(usable)}`);
      else {
        io.err(
          found.length
            ? `not active: ${found.map((subscription) => subscription.status).join(', ')}\n`
            : 'missing\n',
        );
        process.exitCode = 1;
      }
    });

  for (const [name, recreate] of [
    ['ensure', false],
    ['recreate', true],
  ] as const) {
    program
      .command(name)
      .description(
        recreate
          ? 'switch the old subscription off and create a new one'
          : 'create or reactivate when needed',
      )
      .action(async () => {
        const { fhir, spec } = await context();
        const { subscription, action } = await ensureSubscription(fhir, spec, { recreate });
        io.out(`${action}\t${describe(subscription)}`);
      });
  }
  return program;
}

if (import.meta.main) await runProgram(createSubscriptionProgram());
