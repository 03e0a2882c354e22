/** Backport IG (R4) notification bundles for tests, shaped like the IG's own examples. */
export interface BuiltEvent {
  number?: number;
  focus?: string;
  timestamp?: string;
}

export function notificationBundle(options: {
  subscription: string;
  type?: string;
  status?: string;
  counter?: number;
  events?: BuiltEvent[];
}) {
  const events = options.events ?? [];
  return {
    resourceType: 'Bundle',
    type: 'history',
    timestamp: new Date().toISOString(),
    entry: [
      {
        fullUrl: `urn:uuid:${crypto.randomUUID()}`,
        resource: {
          resourceType: 'Parameters',
          parameter: [
            { name: 'subscription', valueReference: { reference: options.subscription } },
            { name: 'topic', valueCanonical: 'http://hl7.org/SubscriptionTopic/encounter-change' },
            { name: 'status', valueCode: options.status ?? 'active' },
            { name: 'type', valueCode: options.type ?? 'event-notification' },
            ...(options.counter === undefined
              ? []
              : [{ name: 'events-since-subscription-start', valueString: String(options.counter) }]),
            ...events.map((event) => ({
              name: 'notification-event',
              part: [
                ...(event.number === undefined
                  ? []
                  : [{ name: 'event-number', valueString: String(event.number) }]),
                { name: 'timestamp', valueInstant: event.timestamp ?? '2026-11-27T10:00:00Z' },
                ...(event.focus ? [{ name: 'focus', valueReference: { reference: event.focus } }] : []),
              ],
            })),
          ],
        },
      },
    ],
  };
}
