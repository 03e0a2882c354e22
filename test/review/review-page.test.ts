import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reviewConfigSchema } from '../../src/config/review-config.ts';
import { barePatientId, describeCitation, isInPatientCompartment } from '../../src/http/citation-view.ts';
import { contentSecurityPolicy, reviewRouter } from '../../src/http/review-routes.ts';

let server: Server;
let baseUrl: string;

beforeAll(async () => {
  const app = express();
  app.use('/review', reviewRouter({ frameAncestors: ['https://ehr.example.org', 'javascript:alert(1)'] }));
  server = app.listen(0, '127.0.0.1');
  await new Promise((resolve) => server.once('listening', resolve));
  baseUrl = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});

afterAll(() => new Promise<void>((resolve) => server.close(() => resolve())));

describe('review page router', () => {
  it('serves the page, stylesheet and script with a strict CSP and no caching', async () => {
    const page = await fetch(`${baseUrl}/review?context=abc`);
    expect(page.status).toBe(200);
    expect(page.headers.get('content-type')).toContain('text/html');
    const policy = page.headers.get('content-security-policy') ?? '';
    expect(policy).toContain("script-src 'self'");
    expect(policy).toContain("default-src 'none'");
    // Unsafe sources given in config are dropped, listed EHR origins kept.
    expect(policy).toContain('frame-ancestors https://ehr.example.org');
    expect(policy).not.toContain('javascript:');
    expect(page.headers.get('cache-control')).toBe('no-store');
    const html = await page.text();
    expect(html).toContain('Drafted by AI');
    // No inline script or inline event handlers: everything must pass script-src 'self'.
    expect(html).not.toMatch(/<script(?![^>]*\bsrc=)|\son[a-z]+=/i);
    expect((await fetch(`${baseUrl}/review/review.js`)).headers.get('content-type')).toContain(
      'text/javascript',
    );
    expect((await fetch(`${baseUrl}/review/review.css`)).headers.get('content-type')).toContain('text/css');
  });

  it('never renders note text as HTML in its script', async () => {
    const script = await (await fetch(`${baseUrl}/review/review.js`)).text();
    expect(script).not.toMatch(/innerHTML|outerHTML|insertAdjacentHTML|document\.write/);
  });

  it('stays small: page, stylesheet and script under 48 KB together, no third-party assets', async () => {
    let total = 0;
    for (const asset of ['/review', '/review/review.css', '/review/review.js']) {
      const body = await (await fetch(`${baseUrl}${asset}`)).text();
      total += Buffer.byteLength(body);
      expect(body).not.toMatch(/https?:\/\/(?!ehr\.example)/);
    }
    expect(total).toBeLessThan(48 * 1024);
  });

  it('defaults frame-ancestors to self', () => {
    expect(contentSecurityPolicy([])).toContain("frame-ancestors 'self'");
  });
});

describe('review config', () => {
  it('accepts EHR origins as a list or a string and refuses anything else', () => {
    expect(reviewConfigSchema.parse(undefined).frameAncestors).toEqual(["'self'"]);
    expect(
      reviewConfigSchema.parse({ frameAncestors: "'self' https://ehr.example.org" }).frameAncestors,
    ).toEqual(["'self'", 'https://ehr.example.org']);
    expect(reviewConfigSchema.safeParse({ frameAncestors: ['*'] }).success).toBe(false);
    expect(reviewConfigSchema.safeParse({ frameAncestors: ['https://a.org; script-src *'] }).success).toBe(
      false,
    );
  });
});

describe('citation view', () => {
  it('keeps citations inside the patient compartment', () => {
    const observation = {
      resourceType: 'Observation' as const,
      id: 'o1',
      status: 'final' as const,
      code: { text: 'HbA1c' },
      subject: { reference: 'https://ehr.example/fhir/Patient/p1' },
    };
    expect(isInPatientCompartment(observation, 'p1')).toBe(true);
    expect(isInPatientCompartment(observation, 'Patient/p1')).toBe(true);
    expect(isInPatientCompartment(observation, 'p11')).toBe(false);
    expect(isInPatientCompartment({ resourceType: 'Patient', id: 'p2' }, 'p1')).toBe(false);
    expect(isInPatientCompartment({ resourceType: 'Organization', id: 'x' }, 'p1')).toBe(false);
    expect(
      isInPatientCompartment(
        { resourceType: 'AllergyIntolerance', id: 'a', patient: { reference: 'Patient/p1' } },
        'p1',
      ),
    ).toBe(true);
    expect(barePatientId('Patient/p1')).toBe('p1');
  });

  it('shows a cited note’s text and a condition’s status', () => {
    const note = describeCitation({
      resourceType: 'DocumentReference',
      id: 'n1',
      status: 'current',
      subject: { reference: 'Patient/p1' },
      content: [
        { attachment: { contentType: 'text/plain', data: Buffer.from('Seen today.').toString('base64') } },
      ],
    });
    expect(note.fields).toContainEqual({ label: 'Note text', value: 'Seen today.' });
    const condition = describeCitation({
      resourceType: 'Condition',
      id: 'c1',
      subject: { reference: 'Patient/p1' },
      code: { coding: [{ display: 'Asthma' }] },
      clinicalStatus: { coding: [{ code: 'active' }] },
      onsetDateTime: '2020-01-01',
    });
    expect(condition.fields).toEqual([
      { label: 'What', value: 'Asthma' },
      { label: 'Status', value: 'active' },
      { label: 'When', value: '2020-01-01' },
    ]);
  });
});
