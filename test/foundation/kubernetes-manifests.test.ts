import { readdirSync, readFileSync } from 'node:fs';
import path from 'node:path';
import ts from 'typescript';
import { describe, expect, it } from 'vitest';
import { parseAllDocuments } from 'yaml';
import { ConfigError, loadConfig } from '../../src/config/load-config.ts';
import { repoRoot } from '../support/shared-fixtures.ts';

/**
 * deploy/kubernetes/ holds plain manifests. Each object is checked against the Kubernetes API schema of its
 * apiVersion and kind (kubernetes-models: the API's OpenAPI definitions compiled to ajv validators), then against
 * what the service needs: probes on /healthz and /readyz, a Service and a PodDisruptionBudget that select the
 * pods, secrets from the Secret, and an environment the service's own configuration accepts.
 */
type Manifest = Record<string, unknown> & { apiVersion: string; kind: string; metadata: { name: string } };

const directory = path.join(repoRoot, 'deploy/kubernetes');

function readManifests(): { file: string; manifest: Manifest }[] {
  return readdirSync(directory)
    .filter((file) => /\.ya?ml$/.test(file))
    .sort()
    .flatMap((file) =>
      parseAllDocuments(readFileSync(path.join(directory, file), 'utf8')).map((document) => {
        if (document.errors.length > 0) throw new Error(`${file}: ${document.errors[0].message}`);
        return { file, manifest: document.toJS() as Manifest };
      }),
    );
}

/** The schema errors of one object, or [] when it is valid; an apiVersion/kind the API does not have is an error. */
async function schemaErrors(manifest: Manifest): Promise<string[]> {
  const { apiVersion, kind } = manifest;
  if (typeof apiVersion !== 'string' || typeof kind !== 'string') return ['apiVersion and kind are required'];
  if (!/^([a-z0-9.-]+\/)?v[0-9a-z]+$/.test(apiVersion) || !/^[A-Z][A-Za-z0-9]*$/.test(kind))
    return [`not an apiVersion/kind: ${apiVersion} ${kind}`];
  let modelClass: new (data: unknown) => { validate(): void };
  try {
    const specifier = `kubernetes-models/${apiVersion}/${kind}`;
    modelClass = (await import(/* @vite-ignore */ specifier))[kind];
  } catch {
    return [`the Kubernetes API has no ${kind} in ${apiVersion}`];
  }
  try {
    new modelClass(manifest).validate();
    return [];
  } catch (error) {
    return [(error as Error).message];
  }
}

/**
 * Fields the API does not define (a misspelt `readinesProbe`): the OpenAPI definitions leave objects open, so the
 * schemas pass them, while API servers refuse them (kubectl's field validation is strict by default). The same
 * definitions as TypeScript types catch them: each manifest as an object literal of its kind's type, where every
 * unknown property is an excess-property error.
 */
function unknownFields(...groups: Manifest[][]): string[][] {
  // One program for every group (building it is the slow part), one virtual module per group.
  const files = new Map(
    groups.map((manifests, group) => [
      path.join(repoRoot, `test/foundation/kubernetes-manifests-${group}.check.mts`),
      manifests
        .map(
          (manifest, index) =>
            `import type { I${manifest.kind} as Kind${index} } from 'kubernetes-models/${manifest.apiVersion}/${manifest.kind}';\n` +
            `export const manifest${index}: Kind${index} = ${JSON.stringify(manifest, null, 1)};`,
        )
        .join('\n'),
    ]),
  );
  const options: ts.CompilerOptions = {
    module: ts.ModuleKind.NodeNext,
    moduleResolution: ts.ModuleResolutionKind.NodeNext,
    target: ts.ScriptTarget.ES2022,
    lib: ['lib.es2022.d.ts'],
    strict: true,
    noEmit: true,
    skipLibCheck: true,
    types: [],
  };
  const host = ts.createCompilerHost(options);
  const getSourceFile = host.getSourceFile;
  host.getSourceFile = (name, language, ...rest) => {
    const text = files.get(name);
    return text === undefined
      ? getSourceFile(name, language, ...rest)
      : ts.createSourceFile(name, text, language);
  };
  const fileExists = host.fileExists;
  host.fileExists = (name) => files.has(name) || fileExists(name);
  const program = ts.createProgram([...files.keys()], options, host);
  return [...files.keys()].map((file) =>
    ts
      .getPreEmitDiagnostics(program, program.getSourceFile(file))
      .map((diagnostic) => ts.flattenDiagnosticMessageText(diagnostic.messageText, ' ')),
  );
}

function only<T extends Manifest>(manifests: Manifest[], kind: string): T {
  const found = manifests.filter((manifest) => manifest.kind === kind);
  expect(found, `exactly one ${kind}`).toHaveLength(1);
  return found[0] as T;
}

interface Probe {
  httpGet?: { path: string; port: string | number };
}
interface Container {
  name: string;
  ports: { name: string; containerPort: number }[];
  envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
  env?: {
    name: string;
    value?: string;
    valueFrom?: { secretKeyRef?: { name: string; key: string; optional?: boolean } };
  }[];
  readinessProbe?: Probe;
  livenessProbe?: Probe;
  startupProbe?: Probe;
  volumeMounts: { name: string; mountPath: string }[];
}
type Deployment = Manifest & {
  spec: {
    replicas: number;
    selector: { matchLabels: Record<string, string> };
    template: {
      metadata: { labels: Record<string, string> };
      spec: {
        containers: Container[];
        volumes: { name: string; secret?: { secretName: string; items?: { key: string; path: string }[] } }[];
      };
    };
  };
};
type Service = Manifest & {
  spec: { selector: Record<string, string>; ports: { port: number; targetPort: string | number }[] };
};
type Budget = Manifest & {
  spec: { minAvailable?: number; selector: { matchLabels: Record<string, string> } };
};
type Secret = Manifest & { stringData?: Record<string, string>; data?: Record<string, string> };
type ConfigMap = Manifest & { data: Record<string, string> };

const selects = (selector: Record<string, string>, labels: Record<string, string>) =>
  Object.entries(selector).every(([name, value]) => labels[name] === value);

describe('Kubernetes manifests (deploy/kubernetes/)', () => {
  const manifests = readManifests().map(({ manifest }) => manifest);
  const deployment = only<Deployment>(manifests, 'Deployment');
  const container = deployment.spec.template.spec.containers[0];
  const secret = only<Secret>(manifests, 'Secret');
  const configMap = only<ConfigMap>(manifests, 'ConfigMap');
  const secretKeys = Object.keys({ ...secret.stringData, ...secret.data });

  it('are all valid against the Kubernetes API schemas of their apiVersion and kind', async () => {
    const files = readManifests();
    expect(files.map(({ manifest }) => manifest.kind).sort()).toEqual([
      'ConfigMap',
      'Deployment',
      'PodDisruptionBudget',
      'Secret',
      'Service',
    ]);
    for (const { file, manifest } of files) {
      expect(await schemaErrors(manifest), `${file} (${manifest.kind})`).toEqual([]);
    }
  });

  it('are refused by the same check when broken', async () => {
    const broken = (change: (copy: Deployment) => void): Deployment => {
      const copy = structuredClone(deployment);
      change(copy);
      return copy;
    };
    const service = only<Service>(manifests, 'Service');
    const cases: [string, Manifest, RegExp][] = [
      [
        'replicas as a word',
        broken((copy) => {
          (copy.spec as { replicas: unknown }).replicas = 'two';
        }),
        /spec\/replicas must be integer/,
      ],
      [
        'a container without its name',
        broken((copy) => {
          delete (copy.spec.template.spec.containers[0] as Partial<Container>).name;
        }),
        /containers\/0 must have required property name/,
      ],
      [
        'a probe port that is neither a number nor a name',
        broken((copy) => {
          (copy.spec.template.spec.containers[0].readinessProbe?.httpGet as { port: unknown }).port = {
            name: 'http',
          };
        }),
        /readinessProbe\/httpGet\/port must be/,
      ],
      [
        'no selector',
        broken((copy) => {
          delete (copy.spec as Partial<Deployment['spec']>).selector;
        }),
        /spec must have required property selector/,
      ],
      ['a kind its apiVersion does not serve', { ...deployment, apiVersion: 'v1' }, /no Deployment in v1/],
      [
        'an API version that does not exist',
        { ...only(manifests, 'PodDisruptionBudget'), apiVersion: 'policy/v1beta2' },
        /no PodDisruptionBudget in policy\/v1beta2/,
      ],
      [
        'a Service port given as a word',
        { ...service, spec: { ...service.spec, ports: [{ port: 'eighty' as never, targetPort: 'http' }] } },
        /ports\/0\/port must be integer/,
      ],
    ];
    for (const [name, manifest, expected] of cases) {
      expect((await schemaErrors(manifest)).join('; '), name).toMatch(expected);
    }
  });

  it('use only fields the Kubernetes API defines, and the check names a misspelt one', () => {
    const misspelt = structuredClone(deployment);
    const probe = misspelt.spec.template.spec.containers[0] as Container & { readinesProbe?: Probe };
    probe.readinesProbe = probe.readinessProbe;
    delete probe.readinessProbe;
    const budget = { ...only<Budget>(manifests, 'PodDisruptionBudget'), spec: { minAvailble: 1 } };
    const [shipped, broken] = unknownFields(manifests, [misspelt, budget as unknown as Manifest]);
    expect(shipped).toEqual([]);
    expect(broken).toEqual([
      expect.stringMatching(/readinesProbe"' does not exist in type 'IContainer'/),
      expect.stringMatching(/minAvailble"' does not exist in type 'IPodDisruptionBudgetSpec'/),
    ]);
  });

  it('probe liveness on /healthz and readiness on /readyz at the port the service listens on', () => {
    const port = container.ports.find((candidate) => candidate.name === 'http');
    expect(port?.containerPort).toBe(Number(configMap.data.PORT));
    expect(configMap.data.HOST).toBe('0.0.0.0');
    expect(container.livenessProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' });
    expect(container.readinessProbe?.httpGet).toEqual({ path: '/readyz', port: 'http' });
    expect(container.startupProbe?.httpGet).toEqual({ path: '/healthz', port: 'http' });
  });

  it('run replicas that the Service reaches and the PodDisruptionBudget keeps one of', () => {
    const labels = deployment.spec.template.metadata.labels;
    expect(selects(deployment.spec.selector.matchLabels, labels)).toBe(true);
    expect(deployment.spec.replicas).toBeGreaterThanOrEqual(2);
    const service = only<Service>(manifests, 'Service');
    expect(selects(service.spec.selector, labels)).toBe(true);
    expect(service.spec.ports[0].targetPort).toBe('http');
    const budget = only<Budget>(manifests, 'PodDisruptionBudget');
    expect(selects(budget.spec.selector.matchLabels, labels)).toBe(true);
    expect(budget.spec.minAvailable).toBeGreaterThanOrEqual(1);
    expect(budget.spec.minAvailable).toBeLessThan(deployment.spec.replicas);
  });

  it('take NOTIFY_SECRET, ADMIN_SECRET, DATABASE_URL and the SMART key from the Secret, which ships empty', () => {
    const fromSecret = Object.fromEntries(
      (container.env ?? []).flatMap((variable) =>
        variable.valueFrom?.secretKeyRef ? [[variable.name, variable.valueFrom.secretKeyRef]] : [],
      ),
    );
    for (const name of ['NOTIFY_SECRET', 'ADMIN_SECRET', 'DATABASE_URL']) {
      expect(fromSecret[name], name).toEqual({ name: secret.metadata.name, key: name });
    }
    // Secrets never sit in the ConfigMap or in plain env values.
    for (const name of ['NOTIFY_SECRET', 'ADMIN_SECRET', 'DATABASE_URL']) {
      expect(configMap.data[name]).toBeUndefined();
      expect(container.env?.find((variable) => variable.name === name)?.value).toBeUndefined();
    }
    const keyVolume = deployment.spec.template.spec.volumes.find((volume) => volume.secret);
    expect(keyVolume?.secret?.secretName).toBe(secret.metadata.name);
    const keyItem = keyVolume?.secret?.items?.[0];
    const keyMount = container.volumeMounts.find((mount) => mount.name === keyVolume?.name);
    expect(path.posix.join(keyMount?.mountPath ?? '', keyItem?.path ?? '')).toBe(
      configMap.data.EHR_AGENT_AUTH__BACKEND__KEY_FILE,
    );
    // Every key a pod cannot start without is in the Secret; an optional one (Medplum's subscription secret) may be added.
    const requiredKeys = Object.values(fromSecret).flatMap((reference) =>
      reference.optional ? [] : [reference.key],
    );
    for (const key of [...requiredKeys, keyItem?.key ?? 'missing']) {
      expect(secretKeys, key).toContain(key);
    }
    expect(fromSecret.EHR_AGENT_INTAKE__MEDPLUM_SUBSCRIPTION_SECRET).toEqual({
      name: secret.metadata.name,
      key: 'MEDPLUM_SUBSCRIPTION_SECRET',
      optional: true,
    });
    expect(container.envFrom?.[0]?.configMapRef?.name).toBe(configMap.metadata.name);
    // No secret is committed: every value is empty until the site fills it.
    expect(Object.values({ ...secret.stringData, ...secret.data }).every((value) => value === '')).toBe(true);
  });

  it('give the service an environment it accepts once the Secret is filled, and one it refuses while empty', () => {
    const filled = {
      ...configMap.data,
      NOTIFY_SECRET: 'a-notify-secret-of-some-length',
      ADMIN_SECRET: 'an-admin-secret-of-some-length',
      DATABASE_URL: 'postgres://agent:password@postgres:5432/agent',
    };
    const config = loadConfig({ env: filled, cwd: repoRoot });
    expect(config.host).toBe('0.0.0.0');
    expect(config.fhir.baseUrl).toBe(configMap.data.FHIR_BASE_URL);
    expect(config.queue).toMatchObject({ adapter: 'postgres', postgresUrl: filled.DATABASE_URL });
    expect(config.storage.adapter).toBe('postgres');
    expect(config.auth.backend).toMatchObject({
      mode: 'smart-backend',
      keyFile: configMap.data.EHR_AGENT_AUTH__BACKEND__KEY_FILE,
    });
    expect(config.model).toMatchObject({ provider: 'remote' });
    const shipped = { ...configMap.data, ...secret.stringData };
    expect(() => loadConfig({ env: shipped, cwd: repoRoot })).toThrow(ConfigError);
    expect(() => loadConfig({ env: shipped, cwd: repoRoot })).toThrow(/NOTIFY_SECRET/);
  });
});
