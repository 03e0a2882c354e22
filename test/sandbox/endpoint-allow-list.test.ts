import { describe, expect, it } from 'vitest';
import { ObservedRepository } from '../../src/sandbox/observed-repository.ts';
import { SandboxSubscriptions } from '../../src/sandbox/sandbox-subscriptions.ts';

describe('subscription endpoint allow-list', () => {
  it('allows loopback http(s) by default and nothing else', () => {
    const subscriptions = new SandboxSubscriptions(new ObservedRepository(), () => undefined);
    expect(subscriptions.endpointAllowed('http://127.0.0.1:8080/notify')).toBe(true);
    expect(subscriptions.endpointAllowed('https://localhost/notify')).toBe(true);
    expect(subscriptions.endpointAllowed('http://[::1]:9000/notify')).toBe(true);
    expect(subscriptions.endpointAllowed('http://inferno.healthit.gov/notify')).toBe(false);
    expect(subscriptions.endpointAllowed('http://127.0.0.1.example.org/notify')).toBe(false);
    expect(subscriptions.endpointAllowed('ftp://127.0.0.1/notify')).toBe(false);
    expect(subscriptions.endpointAllowed('not a url')).toBe(false);
    expect(subscriptions.endpointAllowed(undefined)).toBe(false);
  });

  it('uses the configured prefixes instead of loopback, plus endpoints allowed later', () => {
    const subscriptions = new SandboxSubscriptions(new ObservedRepository(), () => undefined, {
      allowedEndpoints: ['https://drafts.example.org/notify'],
    });
    expect(subscriptions.endpointAllowed('https://drafts.example.org/notify')).toBe(true);
    expect(subscriptions.endpointAllowed('https://drafts.example.org.evil.test/notify')).toBe(false);
    subscriptions.allowEndpoint('https://hooks.example.org');
    expect(subscriptions.endpointAllowed('https://hooks.example.org/any/path')).toBe(true);
    expect(subscriptions.endpointAllowed('https://hooks.example.org.evil.test/notify')).toBe(false);
    expect(subscriptions.endpointAllowed('http://127.0.0.1:8080/notify')).toBe(false);
    subscriptions.allowEndpoint('http://127.0.0.1:8080/notify');
    expect(subscriptions.endpointAllowed('http://127.0.0.1:8080/notify')).toBe(true);
  });
});
