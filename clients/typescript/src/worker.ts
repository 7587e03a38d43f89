// Worker: runs async handlers for outbound tasks, with the lease stream, heartbeats and outcomes
// handled (the Python SDK's statekeeper.Worker, client/statekeeper/_worker.py).
//
//   const worker = new Worker(client).handle("payments", async (task) => {
//     await charge(task.task?.payload);
//     return "ship"; // complete, applying transition "ship" to the task's node
//   });
//   await worker.run(); // until worker.stop()
import type { LeasedTask } from "./gen/statekeeper/v1/task_pb.js";
import type { CompleteOptions, StatekeeperClient } from "./client.js";
import {
  FailedPreconditionError,
  InvalidArgumentError,
  PermissionDeniedError,
  StatekeeperError,
  UnauthenticatedError,
} from "./errors.js";
import { hostname } from "node:os";
import { sleep } from "./sleep.js";

/** Throw from a handler to dead-letter the task at once instead of retrying it. */
export class PermanentTaskError extends Error {
  override name = "PermanentTaskError";
}

/**
 * Handles one leased task. Returning completes it: undefined (no transition), a transition name,
 * or CompleteOptions ({ transition, data, contentType }). Throwing fails the attempt (the server
 * retries with backoff, then dead-letters); PermanentTaskError dead-letters at once. `signal`
 * fires when the lease is lost or stop()'s grace ran out: the outcome is then discarded.
 */
export type TaskHandler = (task: LeasedTask, signal: AbortSignal) => Promise<string | CompleteOptions | undefined | void>;

export interface WorkerOptions {
  /** Tasks handled at once (the lease stream's max in flight; default 8). */
  concurrency?: number;
  /** Lease of each task in ms (default 30 000); heartbeats extend it while the handler runs. */
  leaseMs?: number;
  /** Default: a third of leaseMs. */
  heartbeatMs?: number;
  workerId?: string;
  /** First reconnect delay after the stream failed, doubling to 30 s (default 1 000). */
  reconnectMs?: number;
  /** Told about what the worker cannot report to a caller (a refused settle, a reconnect). */
  onError?: (error: unknown, task?: LeasedTask) => void;
}

export interface WorkerStats {
  leased: number;
  completed: number;
  failed: number;
  stale: number;
  released: number;
  /** Leases lost (expired or taken over) while the handler ran. */
  lost: number;
}

interface Running {
  leased: LeasedTask;
  abort: AbortController;
  done: Promise<void>;
}

export class Worker {
  readonly stats: WorkerStats = { leased: 0, completed: 0, failed: 0, stale: 0, released: 0, lost: 0 };
  private readonly handlers = new Map<string, TaskHandler>();
  private readonly running = new Set<Running>();
  private readonly stopping = new AbortController();
  private readonly concurrency: number;
  private readonly leaseMs: number;
  private readonly heartbeatMs: number;
  private readonly workerId: string;
  private readonly reconnectMs: number;
  private readonly onError: (error: unknown, task?: LeasedTask) => void;
  private started = false;

  constructor(
    private readonly client: StatekeeperClient,
    options: WorkerOptions = {},
  ) {
    this.concurrency = options.concurrency ?? 8;
    this.leaseMs = options.leaseMs ?? 30_000;
    if (this.concurrency < 1) throw new RangeError("concurrency must be at least 1");
    if (this.leaseMs <= 0) throw new RangeError("leaseMs must be positive");
    this.heartbeatMs = options.heartbeatMs ?? this.leaseMs / 3;
    this.workerId = options.workerId || `${hostname()}:${process.pid}`;
    this.reconnectMs = options.reconnectMs ?? 1_000;
    this.onError = options.onError ?? (() => undefined);
  }

  /** Register the handler of a destination's tasks. */
  handle(destination: string, handler: TaskHandler): this {
    if (!destination) throw new TypeError("destination must not be empty");
    if (this.handlers.has(destination)) throw new TypeError(`destination ${JSON.stringify(destination)} already has a handler`);
    this.handlers.set(destination, handler);
    return this;
  }

  get inFlight(): number {
    return this.running.size;
  }

  /** Take and handle tasks until stop(); reconnects when the server goes away. */
  async run(): Promise<void> {
    if (this.handlers.size === 0) throw new TypeError("register at least one handler first");
    if (this.started) throw new TypeError("a Worker runs once");
    this.started = true;
    const signal = this.stopping.signal;
    let delayMs = this.reconnectMs;
    while (!signal.aborted) {
      try {
        const tasks = this.client.leaseTasks([...this.handlers.keys()], {
          maxInFlight: this.concurrency,
          leaseMs: this.leaseMs,
          workerId: this.workerId,
          signal,
        });
        for await (const leased of tasks) {
          delayMs = this.reconnectMs;
          this.start(leased);
        }
      } catch (e) {
        if (e instanceof InvalidArgumentError || e instanceof PermissionDeniedError || e instanceof UnauthenticatedError) {
          throw e; // retrying cannot help
        }
        if (!(e instanceof StatekeeperError)) throw e;
        this.onError(e);
        delayMs = Math.min(delayMs * 2, 30_000);
      }
      if (!signal.aborted) await sleep(delayMs, signal);
    }
    await Promise.allSettled([...this.running].map((r) => r.done));
  }

  /** Take no more tasks; let running handlers finish within graceMs, then release the leases of
   * the rest (their tasks are available again at once) and signal their handlers. */
  async stop(graceMs = 10_000): Promise<void> {
    this.stopping.abort();
    const running = [...this.running];
    const finished = Promise.allSettled(running.map((r) => r.done));
    let timer: NodeJS.Timeout | undefined;
    const late = await Promise.race([
      finished.then(() => false),
      new Promise<boolean>((resolve) => (timer = setTimeout(() => resolve(true), graceMs))),
    ]);
    clearTimeout(timer);
    if (!late) return;
    await Promise.allSettled(
      running
        .filter((r) => this.running.has(r))
        .map(async (r) => {
          r.abort.abort(new Error("worker stopped"));
          await this.settle(this.client.releaseTask(r.leased), r.leased);
          this.stats.released += 1;
        }),
    );
  }

  private start(leased: LeasedTask): void {
    this.stats.leased += 1;
    const abort = new AbortController();
    const entry: Running = { leased, abort, done: Promise.resolve() };
    entry.done = this.handleTask(leased, abort).finally(() => this.running.delete(entry));
    this.running.add(entry);
  }

  private async handleTask(leased: LeasedTask, abort: AbortController): Promise<void> {
    const handler = this.handlers.get(leased.task?.destination ?? "");
    let lost = false;
    const beat = setInterval(() => {
      this.client.heartbeatTask(leased, { leaseMs: this.leaseMs }).catch((e: unknown) => {
        if (e instanceof FailedPreconditionError) {
          lost = true; // LEASE_NOT_HELD: another worker may have it now
          clearInterval(beat);
          abort.abort(e);
        } else {
          this.onError(e, leased); // the server is away: keep trying while the lease may hold
        }
      });
    }, this.heartbeatMs);
    let result: Awaited<ReturnType<TaskHandler>>;
    try {
      if (handler === undefined) throw new PermanentTaskError(`this worker has no handler for ${JSON.stringify(leased.task?.destination)}`);
      result = await handler(leased, abort.signal);
    } catch (e) {
      if (lost) this.stats.lost += 1;
      else if (!abort.signal.aborted) {
        const permanent = e instanceof PermanentTaskError;
        const message = permanent ? e.message : e instanceof Error ? `${e.name}: ${e.message}` : String(e);
        await this.settle(this.client.failTask(leased, message, { permanent }), leased);
        this.stats.failed += 1;
      }
      return;
    } finally {
      clearInterval(beat);
    }
    if (lost) {
      this.stats.lost += 1;
      return;
    }
    if (abort.signal.aborted) return; // stop() released it
    await this.complete(leased, typeof result === "string" ? { transition: result } : (result ?? {}));
  }

  private async complete(leased: LeasedTask, completion: CompleteOptions): Promise<void> {
    try {
      await this.client.completeTask(leased, completion);
      this.stats.completed += 1;
    } catch (e) {
      if (e instanceof FailedPreconditionError && e.reason === "STALE_REFERENCE") {
        this.stats.stale += 1; // the node moved on: the server dropped the task
      } else if (e instanceof FailedPreconditionError && (e.reason === "LEASE_NOT_HELD" || e.reason === "LEASE_SETTLED")) {
        this.stats.lost += 1;
        this.onError(e, leased);
      } else if (e instanceof StatekeeperError) {
        // e.g. the transition is not allowed from the node's state
        await this.settle(this.client.failTask(leased, `completion refused: ${e.reason}: ${e.rawMessage}`), leased);
        this.stats.failed += 1;
      } else {
        throw e;
      }
    }
  }

  private async settle(call: Promise<unknown>, leased: LeasedTask): Promise<void> {
    try {
      await call;
    } catch (e) {
      this.onError(e, leased);
    }
  }
}
