import { readFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import express, { type Router } from 'express';

/**
 * Serves the review page (`/review`): one HTML file, one stylesheet and two script modules, no build step. The files
 * are read once at start and sent with a strict Content-Security-Policy (scripts and styles from this origin
 * only, nothing inline), so even a draft text that slipped past the page's own textContent rendering could not
 * run script. The page works in an EHR iframe: `frameAncestors` lists the EHR origins allowed to embed it.
 */
export interface ReviewRouterOptions {
  /** CSP frame-ancestors sources (`review.frameAncestors`), e.g. `https://ehr.example.org`; default `'self'` only. */
  frameAncestors?: string[];
  /** Where a person who opened /review directly can launch it instead (the sandbox EHR's patient list). */
  launchPageUrl?: string;
}

/**
 * /review opened without a launch (a bookmark, a link in a banner): the app cannot show anything without the
 * EHR's launch, so say how to get one, in words, instead of a page that fails to load.
 */
function howToLaunchPage(launchPageUrl: string | undefined): string {
  const sandboxLine = launchPageUrl
    ? `<p>In this sandbox, the EHR is the service itself: open <a href="${launchPageUrl.replace(/[&<>"']/g, (character) => `&#${character.charCodeAt(0)};`)}">the sandbox EHR's patient list</a> and choose "Open the review app" on a visit.</p>`
    : '';
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Draft notes for review: open from the EHR</title>
<link rel="stylesheet" href="/review/review.css">
</head>
<body>
<main class="how-to-launch">
<h1>Draft notes for review</h1>
<p>This app shows AI-drafted notes for one patient and visit, and it needs your EHR to open it: open the patient's chart in your EHR and start "Draft notes for review" from there (a SMART launch). It cannot be opened on its own.</p>
${sandboxLine}
</main>
</body>
</html>`;
}

const pageDirectory = path.join(path.dirname(fileURLToPath(import.meta.url)), 'review-page');

const assets: Record<string, { file: string; type: string }> = {
  '/': { file: 'index.html', type: 'text/html; charset=utf-8' },
  '/review.css': { file: 'review.css', type: 'text/css; charset=utf-8' },
  '/review.js': { file: 'review.js', type: 'text/javascript; charset=utf-8' },
  '/review-markdown.js': { file: 'review-markdown.js', type: 'text/javascript; charset=utf-8' },
};

const sourcePattern = /^('self'|'none'|https?:\/\/(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)$/;

export function contentSecurityPolicy(frameAncestors: string[]): string {
  const ancestors = frameAncestors.filter((source) => sourcePattern.test(source));
  return [
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "connect-src 'self'",
    "base-uri 'none'",
    "form-action 'none'",
    `frame-ancestors ${ancestors.length > 0 ? ancestors.join(' ') : "'self'"}`,
  ].join('; ');
}

export function reviewRouter(options: ReviewRouterOptions = {}): Router {
  const router = express.Router();
  const policy = contentSecurityPolicy(options.frameAncestors ?? ["'self'"]);
  const loaded = Object.fromEntries(
    Object.entries(assets).map(([route, asset]) => [
      route,
      { type: asset.type, body: readFileSync(path.join(pageDirectory, asset.file)) },
    ]),
  );

  const howToLaunch = Buffer.from(howToLaunchPage(options.launchPageUrl));
  router.get(Object.keys(loaded), (request, response) => {
    const withoutLaunch = request.path === '/' && typeof request.query.context !== 'string';
    const asset = withoutLaunch
      ? { type: 'text/html; charset=utf-8', body: howToLaunch }
      : loaded[request.path];
    response
      .set({
        'content-security-policy': policy,
        'x-content-type-options': 'nosniff',
        'referrer-policy': 'no-referrer',
        // The launch context id rides in the page URL; the page itself holds no data, but keep it out of caches.
        'cache-control': 'no-store',
      })
      .type(asset.type)
      .send(asset.body);
  });
  return router;
}
