import type { MessageInitShape } from "@bufbuild/protobuf";
import { type Client, Code, createClient, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { asCallistoError, errorFromStatus, FailedPrecondition } from "./errors.js";
import { GenerationService } from "./gen/callisto/generation/v1/generation_pb.js";
import {
  type ApprovalDecision,
  OrchestrationService,
  type StartConversationSchema,
  type SubmitInputResponse,
} from "./gen/callisto/orchestration/v1/orchestration_pb.js";
import { PersistenceService, type Event } from "./gen/callisto/persistence/v1/persistence_pb.js";
import { RetrievalService } from "./gen/callisto/retrieval/v1/retrieval_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";
import { EventStream, type ResumeOptions, subscribeResponses } from "./streams.js";

export interface ClientOptions {
  /** The gateway's origin (`http://127.0.0.1:8080`); a page the gateway served passes its own. */
  baseUrl: string;
  /** An API key (`cal_…`), sent as `authorization: Bearer …` on every call. */
  apiKey?: string;
  /** Deadline of unary calls in milliseconds (30 s); streams have none unless a call sets one. */
  timeoutMs?: number;
  /** The fetch the transport uses (tests pass one that drops connections). */
  fetch?: typeof globalThis.fetch;
  /** More interceptors, run after the client's own. */
  interceptors?: Interceptor[];
}

export type StartConversation = MessageInitShape<typeof StartConversationSchema>;

/**
 * The same stub, raising only CallistoErrors: from a unary call, and from reading a stream.
 * (An interceptor cannot do this: connect turns whatever an interceptor throws back into a
 * ConnectError.)
 */
function typed<T extends object>(stub: T): T {
  return new Proxy(stub, {
    get(target, property, receiver) {
      const method: unknown = Reflect.get(target, property, receiver);
      if (typeof method !== "function") return method;
      return (...args: unknown[]) => {
        const result: unknown = method.apply(target, args);
        if (result instanceof Promise) {
          return result.catch((error: unknown) => {
            throw asCallistoError(error);
          });
        }
        if (result !== null && typeof result === "object" && Symbol.asyncIterator in result) {
          const messages = result as AsyncIterable<unknown>;
          return (async function* () {
            try {
              yield* messages;
            } catch (error) {
              throw asCallistoError(error);
            }
          })();
        }
        return result;
      };
    },
  });
}

/** A transport whose default deadline applies to unary calls only: a stream lasts as long as
 * its run, and ends by its own terminal event. */
function unaryDeadlines(inner: Transport, timeoutMs: number): Transport {
  return {
    unary: (method, signal, timeout, header, input, contextValues) =>
      inner.unary(method, signal, timeout ?? timeoutMs, header, input, contextValues),
    stream: (method, signal, timeout, header, input, contextValues) =>
      inner.stream(method, signal, timeout, header, input, contextValues),
  };
}

/**
 * One connection to the mesh through Envoy's gRPC-Web filter: a typed stub per service (every
 * error a CallistoError), and streams that resume themselves. Works in browsers and in Node.
 */
export class CallistoClient {
  readonly persistence: Client<typeof PersistenceService>;
  readonly orchestration: Client<typeof OrchestrationService>;
  readonly retrieval: Client<typeof RetrievalService>;
  readonly generation: Client<typeof GenerationService>;
  readonly health: Client<typeof Health>;

  constructor(readonly options: ClientOptions) {
    const auth: Interceptor = (next) => async (request) => {
      if (options.apiKey) request.header.set("authorization", `Bearer ${options.apiKey}`);
      return await next(request);
    };
    const transport = unaryDeadlines(
      createGrpcWebTransport({
        baseUrl: options.baseUrl,
        interceptors: [auth, ...(options.interceptors ?? [])],
        ...(options.fetch ? { fetch: options.fetch } : {}),
      }),
      options.timeoutMs ?? 30_000,
    );
    this.persistence = typed(createClient(PersistenceService, transport));
    this.orchestration = typed(createClient(OrchestrationService, transport));
    this.retrieval = typed(createClient(RetrievalService, transport));
    this.generation = typed(createClient(GenerationService, transport));
    this.health = typed(createClient(Health, transport));
  }

  /** The tenant this client's key acts for. */
  async getCaller(): Promise<{ tenant: string }> {
    const response = await this.persistence.getCaller({});
    return { tenant: response.tenant };
  }

  /**
   * Starts a run and follows its events, resuming with StreamConversation after a drop. The run
   * is started detached unless `detached: false`: a dropped connection or a closed tab then
   * leaves it going (CancelConversation stops it), and anyone may re-attach.
   */
  run(start: StartConversation, options: ResumeOptions & { detached?: boolean } = {}): EventStream {
    const detached = options.detached ?? true;
    return new EventStream(
      (conversation, after, signal, first) =>
        first
          ? this.orchestration.runConversation({ start: { ...start, detached } }, { signal })
          : this.orchestration.streamConversation({ name: conversation, afterEventId: after }, { signal }),
      "",
      0n,
      options,
    );
  }

  /** Re-attaches to a conversation's events after `afterEventId` (0: from its beginning). */
  streamConversation(name: string, options: ResumeOptions & { afterEventId?: bigint } = {}): EventStream {
    return new EventStream(
      (conversation, after, signal) =>
        this.orchestration.streamConversation({ name: conversation, afterEventId: after }, { signal }),
      name,
      options.afterEventId ?? 0n,
      options,
    );
  }

  /** The stored events of a conversation after `afterSequence`, then live, until it ends. */
  async *subscribeEvents(
    parent: string,
    options: ResumeOptions & { afterSequence?: bigint } = {},
  ): AsyncGenerator<Event, void, undefined> {
    const responses = subscribeResponses(
      (after, signal) => this.persistence.subscribeEvents({ parent, afterSequence: after }, { signal }),
      options.afterSequence ?? 0n,
      options,
    );
    for await (const response of responses) {
      if (response.kind.case === "event") yield response.kind.value;
      if (response.kind.case === "error") throw errorFromStatus(response.kind.value);
    }
  }

  /** A human turn in a running conversation (its id is the event that recorded it). */
  async submitTurn(
    name: string,
    text: string,
    { author = "", endConversation = false }: { author?: string; endConversation?: boolean } = {},
  ): Promise<SubmitInputResponse> {
    return await this.orchestration.submitInput({
      name,
      input: { case: "turn", value: { text, author, endConversation } },
    });
  }

  /** Approves, rejects or modifies a pending approval (`approvals/{id}` or the bare id). */
  async answerApproval(
    approval: string,
    decision: ApprovalDecision,
    { comment = "", modifiedOutput = "", reviewer = "" }: { comment?: string; modifiedOutput?: string; reviewer?: string } = {},
  ): Promise<SubmitInputResponse> {
    const name = approval.startsWith("approvals/") ? approval : `approvals/${approval}`;
    const found = await this.orchestration.getApproval({ name });
    const pending = found.approval;
    if (pending === undefined) throw new FailedPrecondition(Code.FailedPrecondition, `${name} has no approval`);
    return await this.orchestration.submitInput({
      name: pending.conversation,
      input: {
        case: "approval",
        value: { approvalId: pending.name, decision, comment, modifiedOutput, reviewer },
      },
    });
  }

  /** Stops a running conversation (within 2 s); its stream ends with `done(cancelled)`. */
  async cancel(name: string, reason = ""): Promise<void> {
    await this.orchestration.cancelConversation({ name, reason });
  }

  /**
   * A conversation to take part in: its events, and the turns, approvals and cancel a person
   * sends. gRPC-Web has no bidirectional streams, so this is a detached RunConversation
   * followed by StreamConversation, with SubmitInput and CancelConversation beside it.
   */
  converse(start: StartConversation, options: ResumeOptions = {}): ConverseSession {
    return new ConverseSession(this, this.run(start, options));
  }
}

export class ConverseSession {
  constructor(
    private readonly client: CallistoClient,
    readonly events: EventStream,
  ) {}

  private get name(): string {
    if (!this.events.conversation) {
      throw new FailedPrecondition(Code.FailedPrecondition, "the run has not named its conversation yet");
    }
    return this.events.conversation;
  }

  async sendTurn(text: string, options: { author?: string; endConversation?: boolean } = {}) {
    return await this.client.submitTurn(this.name, text, options);
  }

  async approve(
    approvalId: string,
    decision: ApprovalDecision,
    options: { comment?: string; modifiedOutput?: string; reviewer?: string } = {},
  ) {
    return await this.client.answerApproval(approvalId, decision, options);
  }

  async cancel(reason = ""): Promise<void> {
    await this.client.cancel(this.name, reason);
  }

  close(): void {
    this.events.close();
  }
}
