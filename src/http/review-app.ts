import type { Router } from 'express';
import type { DraftLifecycle } from '../../fhir/draft-lifecycle.ts';
import type { PacsAccess } from '../../fhir/imaging/record-images.ts';
import type { ReviewConfig } from '../config/review-config.ts';
import type { Logger } from '../log.ts';
import { draftsApiRouter, userFhirClient } from './drafts-api-routes.ts';
import { reviewRouter } from './review-routes.ts';
import type { SmartLaunch } from './smart-launch.ts';

/**
 * The clinician review app as the composition root mounts it: the page at /review and its API at /api/drafts.
 * Every API request acts through the draft lifecycle bound to a FhirClient holding the signed-in clinician's
 * own token, so the EHR's audit trail and its access rules see the clinician, never the service.
 */
export interface ReviewAppOptions {
  smartLaunch: Pick<SmartLaunch, 'requireLaunchContext'>;
  /** The service's lifecycle (store, mode, regeneration); rebound per request with `withClient`. */
  lifecycle: Pick<DraftLifecycle, 'withClient'>;
  review: ReviewConfig;
  logger: Logger;
  /** `fhir.timeoutMs`. */
  fhirTimeoutMs?: number;
  /** In the sandbox, its EHR's patient list: where /review opened without a launch points. */
  launchPageUrl?: string;
  /** The PACS, for pictures of cited ImagingStudies (when the service reads images). */
  pacs?: PacsAccess;
}

export function reviewAppRouters(options: ReviewAppOptions): { path: string; router: Router }[] {
  const clientFor = (context: Parameters<typeof userFhirClient>[0]) =>
    userFhirClient(context, { timeoutMs: options.fhirTimeoutMs });
  return [
    {
      path: '/review',
      router: reviewRouter({
        frameAncestors: options.review.frameAncestors,
        launchPageUrl: options.launchPageUrl,
      }),
    },
    {
      path: '/api/drafts',
      router: draftsApiRouter({
        requireLaunchContext: options.smartLaunch.requireLaunchContext,
        lifecycleFor: (context) => options.lifecycle.withClient(clientFor(context)),
        fhirClientFor: clientFor,
        logger: options.logger,
        ...(options.pacs ? { pacs: options.pacs } : {}),
      }),
    },
  ];
}
