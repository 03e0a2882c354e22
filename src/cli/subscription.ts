import path from 'node:path';
import { Command } from 'commander';
import type { ServiceConfig } from '../config/config-schema.ts';
import { loadConfig } from '../config/load-config.ts';
import { ensureSubscription, findSubscriptions } from '../intake/subscription-manager.ts';
import { subscriptionSpecFor } from '../intake/subscription-server.ts';
import { createServiceFhirClient } from '../service-fhir-client.ts';
import type { CliIo } from './jobs.ts';
import { runProgram } from './run-program.ts';

/**
 * `subscription`: the service's Subscription on the FHIR server. `list` shows the ones pointing at
 * this service, `check` exits non-zero unless one is active (a `requested` one is not: the server has
 * not confirmed it and may never deliver it), `recreate` switches the old ones off and creates a fresh
 * one; `ensure` does what start-up does, in the shape the server takes (Medplum: active, signed).
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
    const spec = await subscriptionSpecFor(fhir, config.intake.subscription, {
      endpoint: publicUrl,
      secret: config.notify.secret,
      dataDir: path.resolve(config.dataDir),
      declareProfiles: config.fhir.declareProfiles,
      ...(config.intake.medplumSubscriptionSecret
        ? { medplumSecret: config.intake.medplumSubscriptionSecret }
        : {}),
    });
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
    .description('exit 0 when an active subscription exists, 1 otherwise (requested is not usable)')
    .action(async () => {
      const { fhir, spec } = await context();
      const found = await findSubscriptions(fhir, spec);
      const usable = found.find((subscription) => subscription.status === 'active');
      if (usable) {
        io.out(`ok\t${describe(usable)}`);
        return;
      }
      process.exitCode = 1;
      if (found.length === 0) {
        io.err(
          `missing: no Subscription on ${fhir.baseUrl} sends to ${spec.endpoint}; run \`npm run subscription -- ensure\`\n`,
        );
        return;
      }
      for (const subscription of found) io.err(`not usable\t${describe(subscription)}`);
      io.err(
        found.some((subscription) => subscription.status === 'requested')
          ? 'A requested Subscription is not usable: the server has not confirmed it (no handshake answered, or a server such as Medplum that delivers only active ones) and may never deliver it; the service polls instead. Check that the server can reach the endpoint, then `npm run subscription -- recreate`.\n'
          : `No active Subscription (${found.map((subscription) => subscription.status).join(', ')}): the server is not delivering; the service polls instead. Run \`npm run subscription -- ensure\` to ask for it again.\n`,
      );
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
