// @statekeeper/client: a typed statekeeper client for Node.js.
export {
  StatekeeperClient,
  outbound,
  timer,
  type CompleteOptions,
  type ConnectOptions,
  type ConsumerOptions,
  type FilterOptions,
  type LeaseOptions,
  type MachineTypeInit,
  type NodeOptions,
  type PemSource,
  type SubscribeOptions,
  type TaskDefinitionInit,
  type TlsOptions,
  type TransitionOptions,
  type WatchOptions,
  type WriteOptions,
} from "./client.js";
export * from "./errors.js";
export { formatRef, parseRef, toRef, type DataLike, type RefLike } from "./refs.js";
export { PermanentTaskError, Worker, type TaskHandler, type WorkerOptions, type WorkerStats } from "./worker.js";
export { Code } from "@connectrpc/connect";
// The generated API (protobuf-es), for the types the calls return and for everything else.
export * from "./gen/statekeeper/v1/admin_pb.js";
export * from "./gen/statekeeper/v1/common_pb.js";
export * from "./gen/statekeeper/v1/event_pb.js";
export * from "./gen/statekeeper/v1/machine_type_pb.js";
export * from "./gen/statekeeper/v1/node_pb.js";
export * from "./gen/statekeeper/v1/savepoint_pb.js";
export * from "./gen/statekeeper/v1/task_pb.js";
export { ErrorInfoSchema, BadRequestSchema, type ErrorInfo, type BadRequest } from "./gen/google/rpc/error_details_pb.js";
export { StatusSchema, type Status } from "./gen/google/rpc/status_pb.js";
