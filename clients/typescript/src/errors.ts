// Typed errors carrying the gRPC status code, the server's reason and its metadata, read from the
// google.rpc.Status the server sends in the grpc-status-details-bin trailer.
import { fromBinary } from "@bufbuild/protobuf";
import { anyUnpack } from "@bufbuild/protobuf/wkt";
import { Code, ConnectError } from "@connectrpc/connect";
import { BadRequestSchema, ErrorInfoSchema } from "./gen/google/rpc/error_details_pb.js";
import { StatusSchema } from "./gen/google/rpc/status_pb.js";

/** One bad field of a request (google.rpc.BadRequest), as the server names it. */
export interface FieldViolation {
  field: string;
  description: string;
}

/**
 * Any error from the server. `code` is the gRPC status code (Connect's `Code`, numerically the
 * same as gRPC's), `codeName` its gRPC name ("FAILED_PRECONDITION"), `reason` the stable
 * machine-readable reason (e.g. "INVALID_TRANSITION") and `metadata` its details (e.g.
 * `current_state`, `allowed_transitions`, `field`, `limit`).
 */
export class StatekeeperError extends Error {
  readonly code: Code;
  readonly codeName: string;
  readonly reason: string;
  readonly domain: string;
  readonly metadata: Readonly<Record<string, string>>;
  readonly fieldViolations: readonly FieldViolation[];
  /** The server's message without the code and reason. */
  readonly rawMessage: string;

  constructor(
    code: Code,
    rawMessage: string,
    details: { reason?: string; domain?: string; metadata?: Record<string, string>; fieldViolations?: FieldViolation[] } = {},
    options?: { cause?: unknown },
  ) {
    const codeName = codeNames[code] ?? `CODE_${code}`;
    super(`${codeName}: ${rawMessage}${details.reason ? ` [${details.reason}]` : ""}`, options);
    this.name = new.target.name;
    this.code = code;
    this.codeName = codeName;
    this.rawMessage = rawMessage;
    this.reason = details.reason ?? "";
    this.domain = details.domain ?? "";
    this.metadata = { ...(details.metadata ?? {}) };
    this.fieldViolations = [...(details.fieldViolations ?? [])];
  }
}

/** The request is malformed; nothing was written. `metadata.field` names the field. */
export class InvalidArgumentError extends StatekeeperError {}
/** A node, machine type, consumer or other named thing does not exist. */
export class NotFoundError extends StatekeeperError {}
/** The thing to create exists already. */
export class AlreadyExistsError extends StatekeeperError {}
/** Not allowed in the current state, e.g. an invalid transition (metadata: current_state, allowed_transitions). */
export class FailedPreconditionError extends StatekeeperError {}
/** A compare-and-swap did not match (TRANSITION_COUNT_MISMATCH): re-read and retry. */
export class AbortedError extends StatekeeperError {}
/** A limit was reached (`metadata.limit` names it), or the server is shedding load. */
export class ResourceExhaustedError extends StatekeeperError {}
/** The server is unreachable, or could not make a write durable: retry with the same request id. */
export class UnavailableError extends StatekeeperError {}
/** A position (e.g. a revision) lies outside what the server still has. */
export class OutOfRangeError extends StatekeeperError {}
/** No valid credentials (BEARER_TOKEN_REQUIRED, TOKEN_INVALID). */
export class UnauthenticatedError extends StatekeeperError {}
/** The token lacks the permission the call needs (INSUFFICIENT_PERMISSION). */
export class PermissionDeniedError extends StatekeeperError {}
/** The deadline passed before the server answered; a write may or may not have applied: retry with the same request id. */
export class DeadlineExceededError extends StatekeeperError {}

const byCode: Partial<Record<Code, typeof StatekeeperError>> = {
  [Code.InvalidArgument]: InvalidArgumentError,
  [Code.NotFound]: NotFoundError,
  [Code.AlreadyExists]: AlreadyExistsError,
  [Code.FailedPrecondition]: FailedPreconditionError,
  [Code.Aborted]: AbortedError,
  [Code.ResourceExhausted]: ResourceExhaustedError,
  [Code.Unavailable]: UnavailableError,
  [Code.OutOfRange]: OutOfRangeError,
  [Code.Unauthenticated]: UnauthenticatedError,
  [Code.PermissionDenied]: PermissionDeniedError,
  [Code.DeadlineExceeded]: DeadlineExceededError,
};

const codeNames: Record<number, string> = {
  [Code.Canceled]: "CANCELLED",
  [Code.Unknown]: "UNKNOWN",
  [Code.InvalidArgument]: "INVALID_ARGUMENT",
  [Code.DeadlineExceeded]: "DEADLINE_EXCEEDED",
  [Code.NotFound]: "NOT_FOUND",
  [Code.AlreadyExists]: "ALREADY_EXISTS",
  [Code.PermissionDenied]: "PERMISSION_DENIED",
  [Code.ResourceExhausted]: "RESOURCE_EXHAUSTED",
  [Code.FailedPrecondition]: "FAILED_PRECONDITION",
  [Code.Aborted]: "ABORTED",
  [Code.OutOfRange]: "OUT_OF_RANGE",
  [Code.Unimplemented]: "UNIMPLEMENTED",
  [Code.Internal]: "INTERNAL",
  [Code.Unavailable]: "UNAVAILABLE",
  [Code.DataLoss]: "DATA_LOSS",
  [Code.Unauthenticated]: "UNAUTHENTICATED",
};

const STATUS_DETAILS = "grpc-status-details-bin";

/** The StatekeeperError (subclass) for any error a call raised; other errors pass through. */
export function toStatekeeperError(error: unknown): unknown {
  if (error instanceof StatekeeperError || !(error instanceof ConnectError)) return error;
  const details: ConstructorParameters<typeof StatekeeperError>[2] = {};
  const encoded = error.metadata.get(STATUS_DETAILS);
  if (encoded) {
    const status = fromBinary(StatusSchema, Buffer.from(encoded, "base64"));
    for (const detail of status.details) {
      const info = anyUnpack(detail, ErrorInfoSchema);
      if (info) Object.assign(details, { reason: info.reason, domain: info.domain, metadata: info.metadata });
      const bad = anyUnpack(detail, BadRequestSchema);
      if (bad) details.fieldViolations = bad.fieldViolations.map(({ field, description }) => ({ field, description }));
    }
  }
  const kind = byCode[error.code] ?? StatekeeperError;
  return new kind(error.code, error.rawMessage, details, { cause: error });
}
