import { type Client, createClient, type Interceptor } from "@connectrpc/connect";
import { createGrpcWebTransport } from "@connectrpc/connect-web";
import { GenerationService } from "./gen/callisto/generation/v1/generation_pb.js";
import { OrchestrationService } from "./gen/callisto/orchestration/v1/orchestration_pb.js";
import { PersistenceService } from "./gen/callisto/persistence/v1/persistence_pb.js";
import { RetrievalService } from "./gen/callisto/retrieval/v1/retrieval_pb.js";
import { Health } from "./gen/grpc/health/v1/health_pb.js";

export interface ClientOptions {
  /** The gateway's origin (`http://127.0.0.1:8080`); a page served by the gateway passes its own. */
  baseUrl: string;
  /** An API key (`cal_…`), sent as `authorization: Bearer …` on every call. */
  apiKey?: string;
  /** Deadline of unary calls in milliseconds (streams have none unless a call asks). */
  timeoutMs?: number;
}

/** One connection to the mesh through Envoy's gRPC-Web filter, with a stub per service. */
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
    const transport = createGrpcWebTransport({
      baseUrl: options.baseUrl,
      interceptors: [auth],
      defaultTimeoutMs: options.timeoutMs ?? 30_000,
    });
    this.persistence = createClient(PersistenceService, transport);
    this.orchestration = createClient(OrchestrationService, transport);
    this.retrieval = createClient(RetrievalService, transport);
    this.generation = createClient(GenerationService, transport);
    this.health = createClient(Health, transport);
  }

  /** The tenant this client's key acts for. */
  async getCaller(): Promise<{ tenant: string }> {
    const response = await this.persistence.getCaller({});
    return { tenant: response.tenant };
  }
}
