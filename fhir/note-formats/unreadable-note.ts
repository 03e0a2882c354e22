/** Why a note's attachment gave no text; the record lists the note as not read, with this reason. */
export type UnreadableReason = 'no-text-layer' | 'unreadable' | 'too-large' | 'timed-out';

/**
 * A note whose attachment could not be turned into text (a scanned PDF, a malformed RTF, over a cap). Its message
 * names the cause, never the content. One class for every format, so retrieval lists the note with its reason.
 */
export class UnreadableNoteError extends Error {
  readonly reason: UnreadableReason;
  constructor(reason: UnreadableReason, message: string) {
    super(message);
    this.name = 'UnreadableNoteError';
    this.reason = reason;
  }
}
