// Streams that resume themselves from the last event id (or log sequence) they delivered, after
// a dropped connection, an UNAVAILABLE, Envoy's reset of a stream whose replica died (reported
// as INTERNAL or UNKNOWN), or a stream that ended before its terminal event. The event log is
// the source of truth, so a resumed stream delivers exactly what was missed: nothing twice.
import { Code } from "@connectrpc/connect";
import { asCallistoError, CallistoError, errorFromStatus } from "./errors.js";
import type { ConversationEvent, Done } from "./gen/callisto/orchestration/v1/orchestration_pb.js";
import type { Event, SubscribeEventsResponse } from "./gen/callisto/persistence/v1/persistence_pb.js";

export interface ResumeOptions {
  /** Stops the stream (and any wait between attempts) when aborted. */
  signal?: AbortSignal;
  /** Consecutive failed openings before giving up (a delivered event resets the count). */
  maxAttempts?: number;
  /** First wait before re-opening, doubled up to `maxDelayMs`. */
  initialDelayMs?: number;
  maxDelayMs?: number;
}

const RESUMABLE = new Set<Code>([Code.Unavailable, Code.Internal, Code.Unknown]);

/** Whether a stream that failed with `error` should be opened again. */
export function resumable(error: CallistoError): boolean {
  return RESUMABLE.has(error.code) || (error.code === Code.ResourceExhausted && error.retryable);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done, { once: true });
  });
}

/**
 * Reads `open(after)` and re-opens it after the last delivered position until `finished` says
 * the stream is over. `position` reads an item's position (0 for items that hold none, like
 * heartbeats, which are delivered but do not move the cursor).
 */
export async function* resuming<T>(
  open: (after: bigint, signal: AbortSignal) => AsyncIterable<T>,
  {
    after,
    position,
    finished,
    canResume = () => true,
    onResume,
    options = {},
  }: {
    after: bigint;
    position: (item: T) => bigint;
    finished: (item: T) => boolean;
    canResume?: () => boolean;
    onResume?: (error: CallistoError) => void;
    options?: ResumeOptions;
  },
): AsyncGenerator<T, void, undefined> {
  const { signal, maxAttempts = 8, initialDelayMs = 250, maxDelayMs = 5_000 } = options;
  let cursor = after;
  let failures = 0;
  for (;;) {
    // Each opening gets its own controller, so closing the generator cancels the open call.
    const controller = new AbortController();
    const abort = () => controller.abort();
    signal?.addEventListener("abort", abort, { once: true });
    let failure: CallistoError;
    let received = 0;
    try {
      for await (const item of open(cursor, controller.signal)) {
        received += 1;
        const at = position(item);
        if (at !== 0n && at <= cursor) continue; // already delivered before the drop
        if (at !== 0n) cursor = at;
        failures = 0;
        yield item;
        if (finished(item)) return;
      }
      // A stream the service ends at once, cleanly, has nothing (more) to deliver: a run that
      // already ended before `after`.
      if (received === 0) return;
      failure = new CallistoError(Code.Unavailable, "the stream ended before its last event");
    } catch (error) {
      failure = asCallistoError(error);
    } finally {
      signal?.removeEventListener("abort", abort);
      controller.abort();
    }
    if (signal?.aborted) return;
    failures += 1;
    if (!resumable(failure) || !canResume() || failures > maxAttempts) throw failure;
    onResume?.(failure);
    await sleep(Math.min(maxDelayMs, initialDelayMs * 2 ** (failures - 1)), signal);
    if (signal?.aborted) return;
  }
}

const TERMINAL = new Set(["done", "error"]);

/**
 * The events of one conversation, in order, up to its terminal event: `done`, or `error`, which
 * ends the iteration by throwing its CallistoError. It resumes itself after a drop.
 */
export class EventStream implements AsyncIterable<ConversationEvent> {
  /** `conversations/{id}`: known from the first event of a new run. */
  conversation: string;
  /** Id of the last event delivered. */
  lastEventId: bigint;
  /** How many times the stream was opened again after a drop. */
  resumes = 0;
  done: Done | undefined;
  private readonly controller = new AbortController();
  private started = false;

  constructor(
    private readonly open: (conversation: string, after: bigint, signal: AbortSignal, first: boolean) => AsyncIterable<{ event?: ConversationEvent }>,
    conversation: string,
    after: bigint,
    private readonly options: ResumeOptions = {},
  ) {
    this.conversation = conversation;
    this.lastEventId = after;
    options.signal?.addEventListener("abort", () => this.controller.abort(), { once: true });
  }

  async *[Symbol.asyncIterator](): AsyncGenerator<ConversationEvent, void, undefined> {
    if (this.started) throw new Error("an EventStream is read once");
    this.started = true;
    let first = true;
    const responses = resuming(
      (after, signal) => {
        const opened = this.open(this.conversation, after, signal, first);
        first = false;
        return opened;
      },
      {
        after: this.lastEventId,
        position: (response) => response.event?.eventId ?? 0n,
        finished: (response) => TERMINAL.has(response.event?.kind.case ?? ""),
        // A run dropped before its first event has no conversation to re-attach to.
        canResume: () => this.conversation !== "",
        onResume: () => {
          this.resumes += 1;
        },
        options: { ...this.options, signal: this.controller.signal },
      },
    );
    for await (const response of responses) {
      const event = response.event;
      if (event === undefined) continue;
      if (event.conversation) this.conversation = event.conversation;
      this.lastEventId = event.eventId;
      if (event.kind.case === "done") this.done = event.kind.value;
      yield event;
      if (event.kind.case === "error") throw errorFromStatus(event.kind.value);
    }
  }

  /** Stops reading (a detached run goes on; CancelConversation stops it). */
  close(): void {
    this.controller.abort();
  }
}

/** What `subscribeEvents` yields: the stored events, in order (heartbeats are skipped). */
export type StoredEvent = Event;

export function subscribeResponses(
  open: (after: bigint, signal: AbortSignal) => AsyncIterable<SubscribeEventsResponse>,
  after: bigint,
  options: ResumeOptions,
): AsyncGenerator<SubscribeEventsResponse, void, undefined> {
  return resuming(open, {
    after,
    position: (response) => (response.kind.case === "event" ? response.sequence : 0n),
    finished: (response) => response.kind.case === "end" || response.kind.case === "error",
    options,
  });
}
