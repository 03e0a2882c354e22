/**
 * A reason the service cannot start that the operator must fix (a refused client, a narrower grant, a port in
 * use). `npm start` prints its message as one line and exits 1: no stack trace, no object dump, since the
 * message already says what to change.
 */
export class StartupError extends Error {
  constructor(message: string, options: { cause?: unknown } = {}) {
    // One line whatever the cause's text held: a newline in a server's error_description must not split it.
    super(message.replace(/\p{Cc}+/gu, ' ').trim(), { cause: options.cause });
    this.name = 'StartupError';
  }
}
