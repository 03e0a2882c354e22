import { z } from 'zod';

/**
 * Settings of the clinician review page (root key `review`). The page runs inside the EHR's window as an
 * iframe; browsers only allow that for the origins listed here (CSP frame-ancestors). List the EHR's web
 * origins, e.g. `https://ehr.example.org`; the default allows only the service's own pages (the sandbox EHR).
 */
const frameSource = z
  .string()
  .regex(
    /^('self'|'none'|https?:\/\/(\*\.)?[A-Za-z0-9.-]+(:[0-9]{1,5})?)$/,
    "must be 'self', 'none' or an origin such as https://ehr.example.org",
  );

export const reviewConfigSchema = z
  .object({
    frameAncestors: z
      .preprocess(
        (value) => (typeof value === 'string' ? value.split(/[\s,]+/).filter(Boolean) : value),
        z.array(frameSource).min(1),
      )
      .default(["'self'"]),
  })
  .strict()
  .prefault({});

export type ReviewConfig = z.infer<typeof reviewConfigSchema>;
