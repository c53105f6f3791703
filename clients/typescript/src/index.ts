// The public surface of @callisto/client.
export { CallistoClient, type ClientOptions, ConverseSession, type StartConversation } from "./client.js";
export * from "./errors.js";
export { EventStream, resumable, type ResumeOptions } from "./streams.js";

// The generated messages, enums and services, one namespace per proto package (their names
// overlap: both persistence and orchestration have a ListArtifactsRequest).
export * as common from "./gen/callisto/common/v1/common_pb.js";
export * as generation from "./gen/callisto/generation/v1/generation_pb.js";
export * as orchestration from "./gen/callisto/orchestration/v1/orchestration_pb.js";
export * as persistence from "./gen/callisto/persistence/v1/persistence_pb.js";
export * as retrieval from "./gen/callisto/retrieval/v1/retrieval_pb.js";
export * as health from "./gen/grpc/health/v1/health_pb.js";
export * as rpc from "./gen/google/rpc/error_details_pb.js";
