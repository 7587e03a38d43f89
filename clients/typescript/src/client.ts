// StatekeeperClient: the common calls of the Python SDK (client/statekeeper/_async/client.py) over
// Connect's gRPC transport for Node. Everything else is on `client.services` (generated clients).
import { readFileSync } from "node:fs";
import type { MessageInitShape } from "@bufbuild/protobuf";
import { Code, createClient, type CallOptions, type Client, type Interceptor } from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { AdminService } from "./gen/statekeeper/v1/admin_pb.js";
import {
  ConsumerStart,
  EventService,
  type AckResponse,
  type Consumer,
  type Delivery,
  type Event,
  type EventFilterSchema,
  type EventKind,
} from "./gen/statekeeper/v1/event_pb.js";
import {
  MachineTypeService,
  type MachineTypeSchema,
  type RegisterMachineTypeResponse,
  type TaskDefinitionSchema,
} from "./gen/statekeeper/v1/machine_type_pb.js";
import {
  NodeService,
  type ApplyTransitionResponse,
  type DeleteNodeResponse,
  type Node,
  type TaskInputSchema,
} from "./gen/statekeeper/v1/node_pb.js";
import { SavepointService } from "./gen/statekeeper/v1/savepoint_pb.js";
import {
  TaskService,
  type CompleteTaskResponse,
  type CompletionTaskInputSchema,
  type FailTaskResponse,
  type HeartbeatTaskResponse,
  type LeasedTask,
} from "./gen/statekeeper/v1/task_pb.js";
import { StatekeeperError, UnavailableError, toStatekeeperError } from "./errors.js";
import { toData, toRef, type DataLike, type RefLike } from "./refs.js";
import { sleep } from "./sleep.js";

/** A PEM file's path, or the PEM itself (a Buffer, or a string starting with -----BEGIN). */
export type PemSource = string | Buffer;

export interface TlsOptions {
  /** CA certificate(s) to trust for the server; omitted: the system's roots. */
  ca?: PemSource;
  /** This client's certificate and key, for a server that requires mutual TLS. */
  cert?: PemSource;
  key?: PemSource;
  /** The name the server's certificate is checked against, when not the address's host. */
  serverName?: string;
}

export interface ConnectOptions {
  /** Sent as `authorization: Bearer <token>` on every call. */
  token?: string;
  /** TLS: true for the system's roots, or the CA, client certificate and key. */
  tls?: boolean | TlsOptions;
  /** Deadline of each unary call, in ms (default 30 000). */
  timeoutMs?: number;
  /** Check the address, TLS and token with one call (ListMachineTypes) within this many ms
   * before returning (default 10 000; 0: do not check). */
  probeTimeoutMs?: number;
}

export type MachineTypeInit = MessageInitShape<typeof MachineTypeSchema>;
export type TaskDefinitionInit = MessageInitShape<typeof TaskDefinitionSchema>;

/** An outbound task for a transition's `tasks`: handed to workers of `destination`. */
export function outbound(name: string, destination: string, payload: DataLike = new Uint8Array()): TaskDefinitionInit {
  const bytes = typeof payload === "string" ? new TextEncoder().encode(payload) : payload;
  return { name, kind: { case: "outbound", value: { destination, payload: bytes } } };
}

/** A timer task for a transition's `tasks`: applies `transition` delayMs after the commit. */
export function timer(name: string, transition: string, delayMs: number): TaskDefinitionInit {
  return { name, kind: { case: "timer", value: { transition, delayMs: BigInt(delayMs) } } };
}

export interface WriteOptions {
  /** Idempotency key: a retry with the same id returns the first outcome, applied once. */
  requestId?: string;
}

export interface NodeOptions extends WriteOptions {
  data?: DataLike;
  contentType?: string;
  /** 0 (default): the latest version of the type. */
  typeVersion?: number;
}

export interface TransitionOptions extends WriteOptions {
  /** New data for the node; omitted: the data stays. */
  data?: DataLike;
  contentType?: string;
  /** Compare-and-swap: refused with AbortedError (TRANSITION_COUNT_MISMATCH) unless the node's
   * transition count is this. */
  expectedTransitionCount?: number | bigint;
  taskInputs?: MessageInitShape<typeof TaskInputSchema>[];
}

export interface FilterOptions {
  rootId?: string;
  pathPrefix?: ReadonlyArray<{ type: string; id: string }>;
  machineTypes?: string[];
  kinds?: EventKind[];
}

export interface WatchOptions extends FilterOptions {
  /** First revision to deliver (history first, then live); 0 or omitted: only new events. */
  startRevision?: number | bigint;
  /** Reconnect when the server goes away, resuming after the last event seen (default true). */
  reconnect?: boolean;
  /** Ends the watch (the iteration returns). */
  signal?: AbortSignal;
}

export interface ConsumerOptions extends FilterOptions {
  /** Where a new consumer starts: "latest" (default), "earliest" or "revision" (startRevision). */
  start?: "latest" | "earliest" | "revision";
  startRevision?: number | bigint;
  /** Redeliver an unacknowledged event after this many ms (0: the server's default). */
  ackWaitMs?: number;
  /** Most events delivered and not yet acknowledged (0: the server's default). */
  maxUnacked?: number;
}

export interface SubscribeOptions {
  reconnect?: boolean;
  signal?: AbortSignal;
}

export interface LeaseOptions {
  /** Most tasks held unsettled at once (default 1). */
  maxInFlight?: number;
  /** Lease of each task in ms (0: the server's default). */
  leaseMs?: number;
  workerId?: string;
  signal?: AbortSignal;
}

export interface CompleteOptions {
  /** A transition applied to the task's node in the same commit. */
  transition?: string;
  data?: DataLike;
  contentType?: string;
  taskInputs?: MessageInitShape<typeof CompletionTaskInputSchema>[];
}

const consumerStarts = {
  latest: ConsumerStart.LATEST,
  earliest: ConsumerStart.EARLIEST,
  revision: ConsumerStart.REVISION,
} as const;

/** A connection to a statekeeper server. Every call has a deadline and throws a
 * StatekeeperError subclass carrying the gRPC code, the server's reason and its metadata. */
export class StatekeeperClient {
  /** The generated Connect clients, for every RPC this class does not wrap. */
  readonly services: {
    readonly machineTypes: Client<typeof MachineTypeService>;
    readonly nodes: Client<typeof NodeService>;
    readonly tasks: Client<typeof TaskService>;
    readonly events: Client<typeof EventService>;
    readonly savepoints: Client<typeof SavepointService>;
    readonly admin: Client<typeof AdminService>;
  };
  readonly address: string;
  readonly timeoutMs: number;
  private readonly session: Http2SessionManager;

  private constructor(address: string, options: ConnectOptions) {
    const tls = options.tls === true ? {} : options.tls || undefined;
    const baseUrl = /^https?:\/\//.test(address) ? address : `${tls ? "https" : "http"}://${address}`;
    const nodeOptions = tls
      ? { ca: readPem(tls.ca), cert: readPem(tls.cert), key: readPem(tls.key), servername: tls.serverName }
      : {};
    if ((tls?.cert === undefined) !== (tls?.key === undefined)) {
      throw new TypeError("a client certificate needs its key: pass both tls.cert and tls.key");
    }
    this.address = address;
    this.timeoutMs = options.timeoutMs ?? 30_000;
    this.session = new Http2SessionManager(baseUrl, {}, nodeOptions);
    const interceptors: Interceptor[] = [];
    if (options.token) {
      const bearer = `Bearer ${options.token}`;
      interceptors.push((next) => (request) => {
        request.header.set("authorization", bearer);
        return next(request);
      });
    }
    const transport = createGrpcTransport({ baseUrl, sessionManager: this.session, interceptors });
    this.services = {
      machineTypes: createClient(MachineTypeService, transport),
      nodes: createClient(NodeService, transport),
      tasks: createClient(TaskService, transport),
      events: createClient(EventService, transport),
      savepoints: createClient(SavepointService, transport),
      admin: createClient(AdminService, transport),
    };
  }

  /** Connect to `address` ("host:port"); by default checks it with one call first. */
  static async connect(address = "127.0.0.1:50051", options: ConnectOptions = {}): Promise<StatekeeperClient> {
    const client = new StatekeeperClient(address, options);
    const probeMs = options.probeTimeoutMs ?? 10_000;
    if (probeMs > 0) {
      try {
        await client.services.machineTypes.listMachineTypes({ pageSize: 1 }, { timeoutMs: probeMs });
      } catch (e) {
        client.close();
        const error = toStatekeeperError(e);
        if (error instanceof UnavailableError) {
          throw new UnavailableError(error.code, `statekeeper server at ${address} is not reachable: ${error.rawMessage}`, {}, { cause: e });
        }
        throw error;
      }
    }
    return client;
  }

  /** Close the connection (open streams end). */
  close(): void {
    this.session.abort();
  }

  private async call<T>(fn: (options: CallOptions) => Promise<T>): Promise<T> {
    try {
      return await fn({ timeoutMs: this.timeoutMs });
    } catch (e) {
      throw toStatekeeperError(e);
    }
  }

  // -- machine types ------------------------------------------------------------------------

  /** Register a machine type; the identical definition again is a no-op (created: false). */
  registerMachineType(machineType: MachineTypeInit): Promise<RegisterMachineTypeResponse> {
    return this.call((o) => this.services.machineTypes.registerMachineType({ machineType }, o));
  }

  // -- nodes ----------------------------------------------------------------------------------

  /** Create the root of a new tree, in its type's initial state. */
  async createRoot(type: string, id: string, options: NodeOptions = {}): Promise<Node> {
    const { data, contentType, typeVersion = 0, requestId = "" } = options;
    const request = { type, id, data: toData(data, contentType), typeVersion, requestId };
    return required((await this.call((o) => this.services.nodes.createRoot(request, o))).node);
  }

  /** Add a child (type, id) under `parent`. */
  async addChild(parent: RefLike, type: string, id: string, options: NodeOptions = {}): Promise<Node> {
    const { data, contentType, typeVersion = 0, requestId = "" } = options;
    const request = { parent: toRef(parent), key: { type, id }, data: toData(data, contentType), typeVersion, requestId };
    return required((await this.call((o) => this.services.nodes.addChild(request, o))).node);
  }

  async getNode(node: RefLike): Promise<Node> {
    return required((await this.call((o) => this.services.nodes.getNode({ node: toRef(node) }, o))).node);
  }

  /** Apply a named transition. Throws FailedPreconditionError (INVALID_TRANSITION, metadata
   * current_state and allowed_transitions) when not allowed from the node's state, AbortedError
   * (TRANSITION_COUNT_MISMATCH) when expectedTransitionCount does not match. */
  transition(node: RefLike, transition: string, options: TransitionOptions = {}): Promise<ApplyTransitionResponse> {
    const { data, contentType, expectedTransitionCount, requestId = "", taskInputs = [] } = options;
    const request = {
      node: toRef(node),
      transition,
      data: toData(data, contentType),
      expectedTransitionCount: expectedTransitionCount === undefined ? undefined : BigInt(expectedTransitionCount),
      requestId,
      taskInputs,
    };
    return this.call((o) => this.services.nodes.applyTransition(request, o));
  }

  /** Delete a node and its descendants. */
  deleteNode(node: RefLike, options: WriteOptions = {}): Promise<DeleteNodeResponse> {
    const request = { node: toRef(node), requestId: options.requestId ?? "" };
    return this.call((o) => this.services.nodes.deleteNode(request, o));
  }

  // -- events ---------------------------------------------------------------------------------

  /**
   * Events in revision order, history first (from startRevision), then live. After a disconnect
   * (the server restarted, the connection dropped) it reconnects with backoff and resumes right
   * after the last event or progress notice seen: no gap, no duplicate. Stop it with `break` or
   * the signal. Throws OutOfRangeError (REVISION_COMPACTED) if startRevision was compacted.
   */
  async *watch(options: WatchOptions = {}): AsyncGenerator<Event, void, undefined> {
    const { startRevision = 0, reconnect = true, signal } = options;
    const start = BigInt(startRevision);
    let last = start > 0n ? { revision: start - 1n, index: Infinity } : { revision: -1n, index: 0 };
    let done = start > 0n ? start - 1n : -1n; // every event up to here was delivered
    const filter = toFilter(options);
    const events = this.services.events;
    const open = async function* (callOptions: CallOptions): AsyncGenerator<Event, void, undefined> {
      // Resume inside a revision not fully seen (its seen events are skipped), else after the
      // last complete one; 0 ("from now") while nothing is known.
      const resume = done >= 0n || last.revision >= 0n ? max(done + 1n, last.revision) : 0n;
      for await (const response of events.watch({ startRevision: resume, filter }, callOptions)) {
        for (const event of response.events) {
          if (event.revision < last.revision || (event.revision === last.revision && event.index <= last.index)) {
            continue; // delivered before the reconnect
          }
          last = { revision: event.revision, index: event.index };
          yield event;
        }
        done = max(done, response.progressRevision);
      }
    };
    // The server ends a watch only when it shuts down: open it again.
    yield* this.streaming(open, { reconnect, reopenOnEnd: reconnect, signal });
  }

  /** Create a named durable consumer: it keeps its position (what is acknowledged) on the server. */
  async createConsumer(name: string, options: ConsumerOptions = {}): Promise<Consumer> {
    const request = {
      name,
      filter: toFilter(options),
      start: consumerStarts[options.start ?? "latest"],
      startRevision: BigInt(options.startRevision ?? 0),
      ackWaitMs: BigInt(options.ackWaitMs ?? 0),
      maxUnacked: options.maxUnacked ?? 0,
    };
    return required((await this.call((o) => this.services.events.createConsumer(request, o))).consumer);
  }

  async getConsumer(name: string): Promise<Consumer> {
    return required((await this.call((o) => this.services.events.getConsumer({ name }, o))).consumer);
  }

  async deleteConsumer(name: string): Promise<void> {
    await this.call((o) => this.services.events.deleteConsumer({ name }, o));
  }

  /** The consumer's unacknowledged events (redelivered after a reconnect or the ack wait);
   * acknowledge them with ack(). Reconnects when the server goes away; ends when the consumer
   * is deleted. */
  async *subscribe(consumer: string, options: SubscribeOptions = {}): AsyncGenerator<Delivery, void, undefined> {
    const { reconnect = true, signal } = options;
    const events = this.services.events;
    const open = async function* (callOptions: CallOptions): AsyncGenerator<Delivery, void, undefined> {
      for await (const response of events.subscribe({ consumer }, callOptions)) yield* response.deliveries;
    };
    yield* this.streaming(open, { reconnect, reopenOnEnd: false, signal });
  }

  /** Acknowledge deliveries (or events) of a consumer and/or everything up to a revision.
   * Returns the revision up to which everything is acknowledged (the consumer's position). */
  async ack(consumer: string, items: ReadonlyArray<Delivery | Event>, options: { upToRevision?: number | bigint } = {}): Promise<bigint> {
    const eventIds = items.map((item) => {
      const event = "deliveryCount" in item ? required(item.event) : item;
      return { revision: event.revision, index: event.index };
    });
    const request = { consumer, eventIds, upToRevision: BigInt(options.upToRevision ?? 0) };
    const response: AckResponse = await this.call((o) => this.services.events.ack(request, o));
    return response.ackedRevision;
  }

  // -- outbound tasks -------------------------------------------------------------------------

  /** Outbound tasks of the destinations as they become available, each under a lease. Runs
   * until the caller stops iterating or the signal fires (or the server goes away:
   * UnavailableError). Worker wraps this with heartbeats and outcomes. */
  async *leaseTasks(destinations: string[], options: LeaseOptions = {}): AsyncGenerator<LeasedTask, void, undefined> {
    const request = {
      destinations,
      maxInFlight: options.maxInFlight ?? 1,
      leaseDurationMs: BigInt(options.leaseMs ?? 0),
      workerId: options.workerId ?? "",
    };
    const tasks = this.services.tasks;
    const open = async function* (callOptions: CallOptions): AsyncGenerator<LeasedTask, void, undefined> {
      for await (const response of tasks.leaseTasks(request, callOptions)) yield* response.tasks;
    };
    yield* this.streaming(open, { reconnect: false, reopenOnEnd: false, signal: options.signal });
  }

  /** Extend a lease (by leaseMs from now; 0: the stream's lease). FailedPreconditionError
   * (LEASE_NOT_HELD) when the lease is gone. */
  heartbeatTask(leased: LeasedTask, options: { leaseMs?: number } = {}): Promise<HeartbeatTaskResponse> {
    const request = { taskId: taskId(leased), leaseToken: leased.leaseToken, leaseDurationMs: BigInt(options.leaseMs ?? 0) };
    return this.call((o) => this.services.tasks.heartbeatTask(request, o));
  }

  /** Complete a leased task, optionally applying a transition to its node in the same commit.
   * FailedPreconditionError (STALE_REFERENCE) when the node moved on. Repeating returns the
   * first outcome. */
  completeTask(leased: LeasedTask, options: CompleteOptions = {}): Promise<CompleteTaskResponse> {
    const request = {
      taskId: taskId(leased),
      leaseToken: leased.leaseToken,
      transition: options.transition ?? "",
      data: toData(options.data, options.contentType),
      taskInputs: options.taskInputs ?? [],
    };
    return this.call((o) => this.services.tasks.completeTask(request, o));
  }

  /** Report a failed attempt: retried after a backoff, or dead-lettered after the server's
   * max attempts (at once when permanent). */
  failTask(leased: LeasedTask, error: string, options: { permanent?: boolean } = {}): Promise<FailTaskResponse> {
    const request = { taskId: taskId(leased), leaseToken: leased.leaseToken, error, permanent: options.permanent ?? false };
    return this.call((o) => this.services.tasks.failTask(request, o));
  }

  /** Give a leased task back unsettled: available again at once, the attempt not counted. */
  async releaseTask(leased: LeasedTask): Promise<void> {
    const request = { taskId: taskId(leased), leaseToken: leased.leaseToken };
    await this.call((o) => this.services.tasks.releaseTask(request, o));
  }

  /**
   * Yields what the server stream `open(callOptions)` yields. When it fails because the server
   * went away or the connection dropped (isDisconnect) and `reconnect` is on, or when it ends and
   * `reopenOnEnd` is on, it is opened anew after a backoff (0.1 s doubling to 5 s, reset by
   * every item). The signal, or the caller leaving the iteration, cancels it at the server too.
   */
  private async *streaming<T>(
    open: (options: CallOptions) => AsyncIterable<T>,
    how: { reconnect: boolean; reopenOnEnd: boolean; signal?: AbortSignal | undefined },
  ): AsyncGenerator<T, void, undefined> {
    const { signal } = how;
    let delayMs = 100;
    while (!signal?.aborted) {
      const abort = new AbortController();
      const stop = (): void => abort.abort();
      signal?.addEventListener("abort", stop);
      try {
        for await (const item of open({ signal: abort.signal })) {
          delayMs = 100;
          yield item;
        }
        if (!how.reopenOnEnd) return;
      } catch (e) {
        if (signal?.aborted) return;
        const error = toStatekeeperError(e);
        if (!how.reconnect || !isDisconnect(error)) throw error;
      } finally {
        signal?.removeEventListener("abort", stop);
        abort.abort();
      }
      await sleep(delayMs, signal);
      delayMs = Math.min(delayMs * 2, 5_000);
    }
  }
}

function toFilter(options: FilterOptions): MessageInitShape<typeof EventFilterSchema> {
  return {
    rootId: options.rootId ?? "",
    pathPrefix: (options.pathPrefix ?? []).map(({ type, id }) => ({ type, id })),
    machineTypes: options.machineTypes ?? [],
    kinds: options.kinds ?? [],
  };
}

/** The server went away or the connection dropped: UNAVAILABLE, or CANCELLED that this client
 * did not ask for (Node reports a connection cut under an open HTTP/2 stream as CANCEL). */
function isDisconnect(error: unknown): boolean {
  return error instanceof UnavailableError || (error instanceof StatekeeperError && error.code === Code.Canceled);
}

function taskId(leased: LeasedTask): string {
  return required(leased.task).id;
}

function required<T>(value: T | undefined): T {
  if (value === undefined) throw new TypeError("the server's answer lacks a field it always sets");
  return value;
}

function max(a: bigint, b: bigint): bigint {
  return a > b ? a : b;
}

function readPem(source: PemSource | undefined): Buffer | undefined {
  if (source === undefined) return undefined;
  if (Buffer.isBuffer(source)) return source;
  return source.trimStart().startsWith("-----BEGIN") ? Buffer.from(source) : readFileSync(source);
}
