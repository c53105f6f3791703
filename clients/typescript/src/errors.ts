// One error hierarchy for every failed call, decoded from the google.rpc status details the
// services attach (the Python SDK's callisto.errors, in TypeScript).
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  RetryInfoSchema,
} from "./gen/google/rpc/error_details_pb.js";
import type { Status } from "./gen/google/rpc/status_pb.js";

export interface FieldViolation {
  field: string;
  description: string;
}

export interface PreconditionViolation {
  type: string;
  subject: string;
  description: string;
}

export interface ErrorDetails {
  fieldViolations?: FieldViolation[];
  reason?: string;
  domain?: string;
  metadata?: Record<string, string>;
  retryDelayMs?: number;
  preconditionViolations?: PreconditionViolation[];
  resource?: { type: string; name: string; description: string };
}

/** A failed call: its status code, message and decoded details. */
export class CallistoError extends Error {
  readonly code: Code;
  /** The canonical status name: `INVALID_ARGUMENT`, `NOT_FOUND`… */
  readonly status: string;
  readonly rawMessage: string;
  readonly fieldViolations: FieldViolation[];
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Record<string, string>;
  /** How long the service asked the caller to wait before trying again (RetryInfo). */
  readonly retryDelayMs: number | undefined;
  readonly preconditionViolations: PreconditionViolation[];
  readonly resource: { type: string; name: string; description: string } | undefined;

  constructor(code: Code, message: string, details: ErrorDetails = {}) {
    const status = statusName(code);
    super(message ? `${status}: ${message}` : status);
    this.name = new.target.name;
    this.code = code;
    this.status = status;
    this.rawMessage = message;
    this.fieldViolations = details.fieldViolations ?? [];
    this.reason = details.reason ?? "";
    this.domain = details.domain ?? "";
    this.metadata = details.metadata ?? {};
    this.retryDelayMs = details.retryDelayMs;
    this.preconditionViolations = details.preconditionViolations ?? [];
    this.resource = details.resource;
  }

  /** Whether trying again may succeed: the service is unavailable, or it said when. */
  get retryable(): boolean {
    return this.code === Code.Unavailable || this.retryDelayMs !== undefined;
  }
}

export class Cancelled extends CallistoError {}
export class Unknown extends CallistoError {}
export class InvalidArgument extends CallistoError {}
export class DeadlineExceeded extends CallistoError {}
export class NotFound extends CallistoError {}
export class AlreadyExists extends CallistoError {}
export class PermissionDenied extends CallistoError {}
export class ResourceExhausted extends CallistoError {}
export class FailedPrecondition extends CallistoError {}
export class Aborted extends CallistoError {}
export class OutOfRange extends CallistoError {}
export class Unimplemented extends CallistoError {}
export class Internal extends CallistoError {}
export class Unavailable extends CallistoError {}
export class DataLoss extends CallistoError {}
export class Unauthenticated extends CallistoError {}

const CLASSES: Record<Code, new (code: Code, message: string, details?: ErrorDetails) => CallistoError> = {
  [Code.Canceled]: Cancelled,
  [Code.Unknown]: Unknown,
  [Code.InvalidArgument]: InvalidArgument,
  [Code.DeadlineExceeded]: DeadlineExceeded,
  [Code.NotFound]: NotFound,
  [Code.AlreadyExists]: AlreadyExists,
  [Code.PermissionDenied]: PermissionDenied,
  [Code.ResourceExhausted]: ResourceExhausted,
  [Code.FailedPrecondition]: FailedPrecondition,
  [Code.Aborted]: Aborted,
  [Code.OutOfRange]: OutOfRange,
  [Code.Unimplemented]: Unimplemented,
  [Code.Internal]: Internal,
  [Code.Unavailable]: Unavailable,
  [Code.DataLoss]: DataLoss,
  [Code.Unauthenticated]: Unauthenticated,
};

function statusName(code: Code): string {
  if (code === Code.Canceled) return "CANCELLED";
  return (Code[code] ?? "UNKNOWN").replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

function durationMs(duration: { seconds: bigint; nanos: number } | undefined): number | undefined {
  return duration === undefined ? undefined : Number(duration.seconds) * 1000 + duration.nanos / 1e6;
}

function errorOf(code: Code, message: string, details: ErrorDetails): CallistoError {
  const Class = CLASSES[code] ?? Unknown;
  return new Class(code, message, details);
}

function detailsOf(error: ConnectError): ErrorDetails {
  const details: ErrorDetails = {};
  const violations = error.findDetails(BadRequestSchema).flatMap((b) => b.fieldViolations);
  if (violations.length) {
    details.fieldViolations = violations.map((v) => ({ field: v.field, description: v.description }));
  }
  const info = error.findDetails(ErrorInfoSchema)[0];
  if (info) {
    details.reason = info.reason;
    details.domain = info.domain;
    details.metadata = { ...info.metadata };
  }
  const retry = error.findDetails(RetryInfoSchema)[0];
  if (retry) details.retryDelayMs = durationMs(retry.retryDelay);
  const preconditions = error.findDetails(PreconditionFailureSchema).flatMap((p) => p.violations);
  if (preconditions.length) {
    details.preconditionViolations = preconditions.map((v) => ({
      type: v.type,
      subject: v.subject,
      description: v.description,
    }));
  }
  const resource = error.findDetails(ResourceInfoSchema)[0];
  if (resource) {
    details.resource = {
      type: resource.resourceType,
      name: resource.resourceName,
      description: resource.description,
    };
  }
  return details;
}

/** Any thrown value as a CallistoError (a ConnectError keeps its code and details). */
export function asCallistoError(error: unknown): CallistoError {
  if (error instanceof CallistoError) return error;
  if (error instanceof ConnectError) {
    return errorOf(error.code, error.rawMessage, detailsOf(error));
  }
  if (error instanceof Error && error.name === "AbortError") {
    return new Cancelled(Code.Canceled, error.message);
  }
  return new Unknown(Code.Unknown, error instanceof Error ? error.message : String(error));
}

/** The error a google.rpc.Status describes (a stream's `error` event carries one). */
export function errorFromStatus(status: Status): CallistoError {
  const connect = new ConnectError(status.message, status.code as Code);
  for (const detail of status.details) {
    // Decoded by findDetails from its type name, like details that arrive in trailers.
    connect.details.push({ type: detail.typeUrl.slice(detail.typeUrl.lastIndexOf("/") + 1), value: detail.value });
  }
  return asCallistoError(connect);
}
