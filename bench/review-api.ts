import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import { type DraftLifecyclePort, type DraftView, draftsApiRouter } from '../src/http/drafts-api-routes.ts';
import type { LaunchContext } from '../src/http/smart-launch.ts';
import { silentLogger } from '../src/log.ts';

/**
 * What the review API adds on top of the lifecycle: the same draft list (40 drafts of ~2 KB each) served
 * through /api/drafts (session check, patient filter, JSON) and, as the baseline, by a bare express route
 * returning the same JSON. Sequential requests over keep-alive, so the figures are per-request latency.
 */
const requests = 400;

const context: LaunchContext = {
  launchId: 'bench',
  fhirBaseUrl: 'http://127.0.0.1:1/fhir',
  patient: 'p1',
  encounter: 'e1',
  fhirUser: 'Practitioner/bench',
  accessToken: 'bench-token',
  expiresAt: Date.now() + 3_600_000,
  scopes: [],
  csrfToken: 'bench-csrf',
};

const drafts: DraftView[] = Array.from({ length: 40 }, (_, index) => ({
  id: `d${index}`,
  patientId: 'p1',
  encounterId: 'e1',
  kind: index % 3 === 0 ? 'previsit-briefing' : 'progress-summary',
  status: 'preliminary',
  text: `Line with a citation [Observation/o${index}]. `.repeat(40),
  title: 'Progress summary',
  createdAt: new Date(Date.UTC(2026, 10, 1, 0, index)).toISOString(),
  citations: [`Observation/o${index}`],
  flagged: false,
  mode: 'write',
}));

const lifecycle: DraftLifecyclePort = {
  listDrafts: async () => drafts,
  getDraft: async (id) => drafts.find((draft) => draft.id === id),
  editDraft: async () => drafts[0],
  signDraft: async () => drafts[0],
  rejectDraft: async () => drafts[0],
  regenerateDraft: async () => drafts[0],
};

const withContext: RequestHandler = (_request, response, next) => {
  response.locals.launchContext = context;
  next();
};

async function timeRequests(url: string): Promise<number> {
  for (let warm = 0; warm < 20; warm++) await (await fetch(url)).arrayBuffer();
  const startedAt = performance.now();
  for (let index = 0; index < requests; index++) {
    const response = await fetch(url);
    if (!response.ok) throw new Error(`${url}: HTTP ${response.status}`);
    await response.arrayBuffer();
  }
  return (performance.now() - startedAt) / requests;
}

export async function run(): Promise<Record<string, unknown>> {
  const app = express();
  app.use(
    '/api/drafts',
    draftsApiRouter({
      requireLaunchContext: () => withContext,
      lifecycleFor: () => lifecycle,
      logger: silentLogger(),
    }),
  );
  app.get('/baseline', async (_request, response) => {
    response.json({ drafts: await lifecycle.listDrafts('p1') });
  });
  const server: Server = await new Promise((resolve) => {
    const started = app.listen(0, '127.0.0.1', () => resolve(started));
  });
  try {
    const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
    // Alternating rounds, best of each: neither side pays the JIT warm-up for the other.
    const baselineRounds: number[] = [];
    const apiRounds: number[] = [];
    for (let round = 0; round < 3; round++) {
      baselineRounds.push(await timeRequests(`${base}/baseline`));
      apiRounds.push(await timeRequests(`${base}/api/drafts`));
    }
    const baselineMs = Math.min(...baselineRounds);
    const apiMs = Math.min(...apiRounds);
    return {
      requests,
      drafts: drafts.length,
      baselineBareRouteMsPerRequest: Number(baselineMs.toFixed(3)),
      draftsApiMsPerRequest: Number(apiMs.toFixed(3)),
      overheadMsPerRequest: Number((apiMs - baselineMs).toFixed(3)),
    };
  } finally {
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
