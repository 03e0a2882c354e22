import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express, { type RequestHandler } from 'express';
import type { FhirResource } from 'fhir/r4.js';
import jpeg from 'jpeg-js';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { outcomeError } from '../../fhir/operation-outcome.ts';
import { draftsApiRouter } from '../../src/http/drafts-api-routes.ts';
import type { LaunchContext } from '../../src/http/smart-launch.ts';
import { silentLogger } from '../../src/log.ts';
import { createMemoryDraftLifecycle } from '../review/memory-draft-lifecycle.ts';
import { halvesJpeg, halvesPng } from './synthetic-images.ts';

/**
 * The review app's pictures of cited images (issue 18): GET /api/drafts/citations/<Type>/<id>/image reads the
 * cited resource and its Binary with the clinician's own token, refuses another patient's image (the resource,
 * or a Binary naming another context), and answers a downscaled JPEG: a thumbnail, or the larger picture the
 * citation view opens. The router runs behind a stand-in for the SMART launch middleware, as in drafts-api.test.ts.
 */
const clinician: LaunchContext = {
  launchId: 'launch-1',
  fhirBaseUrl: 'http://127.0.0.1:1/fhir',
  patient: 'p1',
  encounter: 'e1',
  fhirUser: 'Practitioner/dr-a',
  accessToken: 'clinician-token',
  expiresAt: Date.now() + 3_600_000,
  scopes: [],
  csrfToken: 'csrf',
};

const resources: Record<string, FhirResource> = {
  'Media/chest': {
    resourceType: 'Media',
    id: 'chest',
    status: 'completed',
    subject: { reference: 'Patient/p1' },
    content: { contentType: 'image/png', data: halvesPng(2000, 1000).toString('base64') },
  },
  'DocumentReference/photo': {
    resourceType: 'DocumentReference',
    id: 'photo',
    status: 'current',
    subject: { reference: 'Patient/p1' },
    content: [{ attachment: { contentType: 'image/jpeg', url: 'Binary/photo-bytes' } }],
  },
  'Binary/photo-bytes': {
    resourceType: 'Binary',
    id: 'photo-bytes',
    contentType: 'image/jpeg',
    securityContext: { reference: 'DocumentReference/photo' },
    data: halvesJpeg(300, 200).toString('base64'),
  },
  'DocumentReference/borrowed': {
    resourceType: 'DocumentReference',
    id: 'borrowed',
    status: 'current',
    subject: { reference: 'Patient/p1' },
    content: [{ attachment: { contentType: 'image/jpeg', url: 'Binary/someone-elses' } }],
  },
  'Binary/someone-elses': {
    resourceType: 'Binary',
    id: 'someone-elses',
    contentType: 'image/jpeg',
    securityContext: { reference: 'Patient/p2' },
    data: halvesJpeg(64, 64).toString('base64'),
  },
  'Media/other-patient': {
    resourceType: 'Media',
    id: 'other-patient',
    status: 'completed',
    subject: { reference: 'Patient/p2' },
    content: { contentType: 'image/jpeg', data: halvesJpeg(64, 64).toString('base64') },
  },
  'Media/not-really': {
    resourceType: 'Media',
    id: 'not-really',
    status: 'completed',
    subject: { reference: 'Patient/p1' },
    content: { contentType: 'image/png', data: Buffer.from('plain text').toString('base64') },
  },
  'Observation/o1': {
    resourceType: 'Observation',
    id: 'o1',
    status: 'final',
    code: { text: 'Blood pressure' },
    subject: { reference: 'Patient/p1' },
  },
};

describe('review app: pictures of cited images, read with the clinician’s token', () => {
  let server: Server;
  let baseUrl: string;
  const tokensUsed: string[] = [];

  beforeAll(async () => {
    const requireLaunchContext = (): RequestHandler => (_request, response, next) => {
      response.locals.launchContext = clinician;
      next();
    };
    const lookUp = (context: LaunchContext, path: string) => {
      tokensUsed.push(context.accessToken);
      const [type, id] = path.split('/');
      const resource = resources[`${type}/${id}`];
      if (!resource) throw outcomeError('not-found', 'gone', 404);
      return resource as never;
    };
    const app = express();
    app.use(
      '/api/drafts',
      draftsApiRouter({
        requireLaunchContext,
        lifecycleFor: () => createMemoryDraftLifecycle([]).lifecycle,
        fhirClientFor: (context) => ({
          read: async (type: string, id: string) => lookUp(context, `${type}/${id}`),
          get: async (path: string) => lookUp(context, path),
        }),
        logger: silentLogger(),
      }),
    );
    server = app.listen(0, '127.0.0.1');
    await new Promise((resolve) => server.once('listening', resolve));
    baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}/api/drafts`;
  });

  afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

  async function picture(path: string) {
    const response = await fetch(`${baseUrl}/citations/${path}`);
    return { status: response.status, body: await response.json() };
  }

  it('answers a thumbnail and, for the citation view, the larger picture, as downscaled JPEGs', async () => {
    tokensUsed.length = 0;
    const thumbnail = await picture('Media/chest/image');
    expect(thumbnail.status).toBe(200);
    expect(thumbnail.body).toMatchObject({ contentType: 'image/jpeg', width: 160, height: 80 });
    const decoded = jpeg.decode(Buffer.from(thumbnail.body.data, 'base64'), { useTArray: true });
    expect([decoded.width, decoded.height]).toEqual([160, 80]);
    expect(decoded.data[(40 * 160 + 10) * 4]).toBeGreaterThan(230);
    expect(decoded.data[(40 * 160 + 150) * 4]).toBeLessThan(25);
    const full = await picture('Media/chest/image?size=full');
    expect([full.body.width, full.body.height]).toEqual([896, 448]);
    expect(new Set(tokensUsed)).toEqual(new Set(['clinician-token']));
  });

  it('reads an image attachment kept as a Binary with the clinician’s token', async () => {
    tokensUsed.length = 0;
    const photo = await picture('DocumentReference/photo/image');
    expect(photo.status).toBe(200);
    expect([photo.body.width, photo.body.height]).toEqual([160, 107]);
    expect(tokensUsed).toEqual(['clinician-token', 'clinician-token']);
  });

  it('refuses another patient’s image, and a Binary that names another patient as its context', async () => {
    expect((await picture('Media/other-patient/image')).status).toBe(403);
    expect((await picture('DocumentReference/borrowed/image')).status).toBe(403);
  });

  it('says when a source holds no image, or bytes that are not one', async () => {
    expect((await picture('Observation/o1/image')).status).toBe(404);
    const fake = await picture('Media/not-really/image');
    expect(fake.status).toBe(422);
    expect(fake.body.issue[0].diagnostics).toContain('not-an-image');
  });
});
