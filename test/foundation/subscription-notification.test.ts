import { readFileSync } from 'node:fs';
import path from 'node:path';
import { describe, expect, it } from 'vitest';
import { OperationOutcomeError } from '../../fhir/operation-outcome.ts';
import { parseNotification } from '../../fhir/subscription-notification.ts';
import { sharedFixtures } from '../support/shared-fixtures.ts';

const fixture = (name: string) =>
  JSON.parse(readFileSync(path.join(sharedFixtures as string, 'subscriptions', name), 'utf8'));

describe.skipIf(!sharedFixtures)('Backport IG notification parsing (shared fixtures)', () => {
  it('reads the id-only example: one event focused on the Encounter', () => {
    const parsed = parseNotification(fixture('ig-r4-notification-id-only.json'));
    expect(parsed.type).toBe('event-notification');
    expect(parsed.eventsSinceSubscriptionStart).toBe(1);
    expect(parsed.events).toEqual([
      expect.objectContaining({ eventNumber: 1, focus: 'Encounter/86009987-eabe-42bf-8c02-b112b18cb616' }),
    ]);
  });

  it('reads the empty example: an event without focus', () => {
    const parsed = parseNotification(fixture('ig-r4-notification-empty.json'));
    expect(parsed.events).toHaveLength(1);
    expect(parsed.events[0].focus).toBeUndefined();
  });

  it('reads the full-resource example with the resource attached', () => {
    const parsed = parseNotification(fixture('ig-r4-notification-full_resource.json'));
    expect(parsed.events[0].focus).toMatch(/^Encounter\//);
    expect(parsed.events[0].resource?.resourceType).toBe('Encounter');
  });
});

describe('Backport IG notification leniency and strictness', () => {
  const minimal = (parameters: unknown[]) => ({
    resourceType: 'Bundle',
    type: 'history',
    entry: [{ resource: { resourceType: 'Parameters', parameter: parameters } }],
  });

  it('tolerates valueString subscription, valueDate timestamps, relative focus and numeric counts', () => {
    const parsed = parseNotification(
      minimal([
        { name: 'subscription', valueString: 'Subscription/s1' },
        { name: 'type', valueCode: 'event-notification' },
        { name: 'events-since-subscription-start', valueString: ' 7 ' },
        {
          name: 'notification-event',
          part: [
            { name: 'event-number', valueString: '7' },
            { name: 'timestamp', valueDate: '2026-11-27' },
            { name: 'focus', valueReference: { reference: 'Encounter/e1/_history/2' } },
          ],
        },
      ]),
    );
    expect(parsed).toMatchObject({ subscription: 'Subscription/s1', eventsSinceSubscriptionStart: 7 });
    expect(parsed.events[0]).toMatchObject({
      eventNumber: 7,
      timestamp: '2026-11-27',
      focus: 'Encounter/e1',
    });
  });

  it('refuses a bundle whose first entry is not Parameters, an unknown type, and a bad count', () => {
    const notParameters = {
      resourceType: 'Bundle',
      type: 'history',
      entry: [{ resource: { resourceType: 'Patient' } }],
    };
    expect(() => parseNotification(notParameters)).toThrow(/first entry/);
    expect(() =>
      parseNotification(
        minimal([
          { name: 'subscription', valueString: 'S/1' },
          { name: 'type', valueCode: 'party' },
        ]),
      ),
    ).toThrow(OperationOutcomeError);
    expect(() =>
      parseNotification(
        minimal([
          { name: 'subscription', valueString: 'S/1' },
          { name: 'type', valueCode: 'heartbeat' },
          { name: 'events-since-subscription-start', valueString: 'many' },
        ]),
      ),
    ).toThrow(/whole number/);
    expect(() => parseNotification({ resourceType: 'Bundle', type: 'searchset', entry: [] })).toThrow(
      /history/,
    );
  });
});
