import type { Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import express from 'express';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { reviewConfigSchema } from '../../src/config/review-config.ts';
import { barePatientId, describeCitation, isInPatientCompartment } from '../../src/http/citation-view.ts';
import { inlineParts, parseDraftText } from '../../src/http/review-page/review-markdown.js';
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

  it('never renders note text as HTML in its scripts', async () => {
    for (const asset of ['/review/review.js', '/review/review-markdown.js']) {
      const response = await fetch(`${baseUrl}${asset}`);
      expect(response.status).toBe(200);
      expect(response.headers.get('content-type')).toContain('text/javascript');
      expect(await response.text()).not.toMatch(
        /innerHTML|outerHTML|insertAdjacentHTML|document\.write|DOMParser/,
      );
    }
  });

  it('stays small: page, stylesheet and script under 48 KB together, no third-party assets', async () => {
    let total = 0;
    for (const asset of [
      '/review',
      '/review/review.css',
      '/review/review.js',
      '/review/review-markdown.js',
    ]) {
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

describe('draft text as the page reads it', () => {
  const extractive = [
    '## Progress summary (AI draft - not final until signed by a clinician)',
    'Encounter: Follow-up encounter on 2026-11-20 [Encounter/e1]',
    '',
    'Active problems:',
    '- Essential hypertension [Condition/htn]',
    '- Type 2 diabetes, **poorly controlled** [Condition/dm/_history/2]',
    '  - HbA1c 8.1% [Observation/a1c]',
    '',
    '### Plan',
    '1. Recheck blood pressure [Observation/bp1]',
    '2. A literal <img src=x onerror="alert(1)"> stays text [Observation/bp1]',
  ].join('\n');

  it('reads headings, section labels, lists and nested lists as blocks', () => {
    const blocks = parseDraftText(extractive);
    expect(blocks.map((block) => block.type)).toEqual([
      'heading',
      'paragraph',
      'heading',
      'list',
      'heading',
      'list',
    ]);
    // ## and ### rank as depths 1 and 2; a "Label:" line sits below the deepest Markdown heading.
    expect(blocks[0]).toEqual({
      type: 'heading',
      depth: 1,
      text: 'Progress summary (AI draft - not final until signed by a clinician)',
    });
    expect(blocks[2]).toEqual({ type: 'heading', depth: 3, text: 'Active problems' });
    expect(blocks[4]).toEqual({ type: 'heading', depth: 2, text: 'Plan' });
    const problems = blocks[3];
    expect(problems).toMatchObject({ type: 'list', ordered: false });
    if (problems.type !== 'list') throw new Error('not a list');
    expect(problems.items.map((item) => item.text)).toEqual([
      'Essential hypertension [Condition/htn]',
      'Type 2 diabetes, **poorly controlled** [Condition/dm/_history/2]',
    ]);
    expect(problems.items[1].children[0].items[0].text).toBe('HbA1c 8.1% [Observation/a1c]');
    expect(blocks[5]).toMatchObject({ type: 'list', ordered: true });
  });

  it('keeps the text of every line, markup-looking or not, as text parts and citations', () => {
    const blocks = parseDraftText(extractive);
    const plan = blocks[5];
    if (plan.type !== 'list') throw new Error('not a list');
    expect(inlineParts(plan.items[1].text)).toEqual([
      { type: 'text', text: 'A literal <img src=x onerror="alert(1)"> stays text ' },
      {
        type: 'citation',
        label: '[Observation/bp1]',
        resourceType: 'Observation',
        id: 'bp1',
        version: undefined,
      },
    ]);
    expect(inlineParts('Type 2 diabetes, **poorly controlled** [Condition/dm/_history/2]')).toEqual([
      { type: 'text', text: 'Type 2 diabetes, ' },
      { type: 'strong', text: 'poorly controlled' },
      { type: 'text', text: ' ' },
      {
        type: 'citation',
        label: '[Condition/dm/_history/2]',
        resourceType: 'Condition',
        id: 'dm',
        version: '2',
      },
    ]);
    // A sentence that ends in a colon after a citation is a statement, not a section label.
    expect(parseDraftText('Plan [Condition/htn]:')[0].type).toBe('paragraph');
    expect(parseDraftText('<h2>not a heading</h2>')).toEqual([
      { type: 'paragraph', lines: ['<h2>not a heading</h2>'] },
    ]);
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
