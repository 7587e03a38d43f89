// The TypeScript client against a real statekeeper server, run by tests/test_typescript_client.py:
//   STATEKEEPER_ADDRESS        a plain server, restartable through
//   STATEKEEPER_CONTROL_URL    POST /restart: SIGKILL the server and start it again, same port
//   STATEKEEPER_TLS_ADDRESS    a mutual-TLS server with tokens, and its STATEKEEPER_TLS_CA,
//                              _TLS_CERT, _TLS_KEY (client certificate) and _TLS_TOKEN (admin)
import assert from "node:assert/strict";
import { after, before, test } from "node:test";
import {
  AbortedError,
  Code,
  EventKind,
  FailedPreconditionError,
  InvalidArgumentError,
  NotFoundError,
  PermanentTaskError,
  StatekeeperClient,
  StatekeeperError,
  TaskStatus,
  UnauthenticatedError,
  UnavailableError,
  Worker,
  formatRef,
  outbound,
  type Event,
  type MachineTypeInit,
} from "../src/index.js";

const env = (name: string): string => {
  const value = process.env[name];
  assert.ok(value, `${name} must be set (tests/test_typescript_client.py sets it)`);
  return value;
};
const address = env("STATEKEEPER_ADDRESS");
const suffix = `${process.pid}-${Date.now()}`;
const destination = `payments-${suffix}`;
const ORDER: MachineTypeInit = {
  name: `tsorder${process.pid}`,
  version: 1,
  states: ["new", "paid", "shipped", "cancelled"],
  initialState: "new",
  terminalStates: ["shipped", "cancelled"],
  transitions: [
    { name: "pay", sources: ["new"], destination: "paid", tasks: [outbound("charge", destination, '{"amount": 42}')] },
    { name: "ship", sources: ["paid"], destination: "shipped" },
    { name: "cancel", sources: ["new", "paid"], destination: "cancelled" },
    { name: "touch", sources: ["new", "paid"], destination: "paid" },
  ],
};
const orderType = ORDER.name ?? "";
let client: StatekeeperClient;

before(async () => {
  client = await StatekeeperClient.connect(address);
  await client.registerMachineType(ORDER);
});

after(() => client.close());

async function restartServer(): Promise<void> {
  const response = await fetch(`${env("STATEKEEPER_CONTROL_URL")}/restart`, { method: "POST" });
  assert.equal(response.status, 200, await response.text());
}

/** The next `count` items of an async iterator, failing after timeoutMs. */
async function take<T>(items: AsyncIterator<T>, count: number, timeoutMs = 30_000): Promise<T[]> {
  const out: T[] = [];
  const deadline = Date.now() + timeoutMs;
  while (out.length < count) {
    const left = deadline - Date.now();
    let timer: NodeJS.Timeout | undefined;
    const next = await Promise.race([
      items.next(),
      new Promise<"timeout">((resolve) => (timer = setTimeout(() => resolve("timeout"), Math.max(left, 0)))),
    ]);
    clearTimeout(timer);
    if (next === "timeout") assert.fail(`only ${out.length} of ${count} items within ${timeoutMs} ms`);
    if (next.done) assert.fail(`the stream ended after ${out.length} of ${count} items`);
    out.push(next.value);
  }
  return out;
}

const eventIds = (events: Event[]): string[] => events.map((e) => `${e.revision}.${e.index}`);

test("register type, create root, add child, get by root/type:id", async () => {
  const again = await client.registerMachineType(ORDER);
  assert.equal(again.created, false); // identical re-registration is a no-op
  const root = await client.createRoot(orderType, `o-${suffix}`, { data: '{"total": 42}', contentType: "application/json" });
  assert.equal(root.state, "new");
  assert.equal(root.transitionCount, 0n);
  const child = await client.addChild(root, orderType, "sub-1", { data: new Uint8Array([1, 2, 3]) });
  assert.equal(formatRef(child.ref!), `o-${suffix}/${orderType}:sub-1`);
  const fetched = await client.getNode(`o-${suffix}/${orderType}:sub-1`);
  assert.deepEqual([...(fetched.data?.value ?? [])], [1, 2, 3]);
  assert.equal((await client.getNode(root)).childCounts[orderType], 1n);
  const deleted = await client.deleteNode(root);
  assert.equal(deleted.deletedCount, 2n);
  await assert.rejects(client.getNode(root), (e: unknown) => e instanceof NotFoundError && e.reason === "NODE_NOT_FOUND");
});

test("transition with compare-and-swap and request ids", async () => {
  const root = await client.createRoot(orderType, `cas-${suffix}`);
  const paid = await client.transition(root, "pay", { expectedTransitionCount: 0 });
  assert.equal(paid.node?.state, "paid");
  assert.equal(paid.fromState, "new");
  assert.equal(paid.tasks.length, 1); // the outbound charge, committed with the transition
  await assert.rejects(client.transition(root, "touch", { expectedTransitionCount: 0 }), (e: unknown) => {
    assert.ok(e instanceof AbortedError, String(e));
    assert.equal(e.code, Code.Aborted);
    assert.equal(e.reason, "TRANSITION_COUNT_MISMATCH");
    assert.deepEqual({ ...e.metadata }, { actual: "1", expected: "0" });
    return true;
  });
  const first = await client.transition(root, "touch", { requestId: `touch-${suffix}`, data: "v2" });
  const retry = await client.transition(root, "touch", { requestId: `touch-${suffix}`, data: "v2" });
  assert.equal(retry.revision, first.revision); // the first outcome, applied once
  assert.equal((await client.getNode(root)).transitionCount, 2n);
  await assert.rejects(
    client.transition(root, "touch", { requestId: `touch-${suffix}`, data: "other" }),
    (e: unknown) => e instanceof InvalidArgumentError && e.reason === "REQUEST_ID_REUSED",
  );
  await client.transition(root, "cancel");
  await client.deleteNode(root);
});

test("errors carry the gRPC code, the ErrorInfo reason and its metadata", async () => {
  const root = await client.createRoot(orderType, `err-${suffix}`);
  await client.transition(root, "cancel");
  const error = await client.transition(root, "pay").then(
    () => assert.fail("pay from cancelled must be refused"),
    (e: unknown) => e,
  );
  assert.ok(error instanceof FailedPreconditionError);
  assert.ok(error instanceof StatekeeperError);
  assert.equal(error.code, Code.FailedPrecondition);
  assert.equal(error.codeName, "FAILED_PRECONDITION");
  assert.equal(error.reason, "INVALID_TRANSITION");
  assert.equal(error.domain, "statekeeper.v1");
  assert.equal(error.metadata["current_state"], "cancelled");
  assert.equal(error.metadata["terminal"], "true");
  assert.match(error.message, /^FAILED_PRECONDITION: .*\[INVALID_TRANSITION\]$/);
  const bad = await client.createRoot(orderType, "").then(
    () => assert.fail("an empty id must be refused"),
    (e: unknown) => e,
  );
  assert.ok(bad instanceof InvalidArgumentError);
  assert.equal(bad.reason, "FIELD_REQUIRED");
  assert.deepEqual(bad.fieldViolations.map((v) => v.field), ["id"]); // google.rpc.BadRequest
  await client.deleteNode(root);
});

test("connect to a server that is not there: UnavailableError naming the address", async () => {
  await assert.rejects(StatekeeperClient.connect("127.0.0.1:1", { probeTimeoutMs: 5_000 }), (e: unknown) => {
    assert.ok(e instanceof UnavailableError, String(e));
    assert.match(e.message, /127\.0\.0\.1:1 is not reachable/);
    return true;
  });
});

test("watch resumes after the server restarts: no gap, no duplicate", { timeout: 120_000 }, async () => {
  const root = await client.createRoot(orderType, `watch-${suffix}`);
  const start = (await client.getNode(root)).createRevision;
  const watch = client.watch({ startRevision: start, rootId: root.ref!.rootId });
  const before = await take(watch, 1);
  assert.equal(before[0]?.kind, EventKind.NODE_CREATED);
  await client.transition(root, "pay");
  const paid = await take(watch, 2); // transitioned + task created, same revision
  await restartServer(); // SIGKILL: the stream drops under the watch
  await client.transition(root, "ship");
  const afterRestart = await take(watch, 1, 60_000);
  await watch.return();
  assert.equal(afterRestart[0]?.kind, EventKind.NODE_TRANSITIONED);
  assert.equal(afterRestart[0]?.toState, "shipped");
  // Exactly what a fresh watch of the same history delivers.
  const seen = [...before, ...paid, ...afterRestart];
  const history = client.watch({ startRevision: start, rootId: root.ref!.rootId, reconnect: false });
  const expected = await take(history, seen.length);
  await history.return();
  assert.deepEqual(eventIds(seen), eventIds(expected));
  assert.equal(new Set(eventIds(seen)).size, seen.length);
  await client.deleteNode(root);
});

test("watch resumes after the connection drops (client side)", { timeout: 60_000 }, async () => {
  const other = await StatekeeperClient.connect(address);
  const root = await client.createRoot(orderType, `drop-${suffix}`);
  const watch = other.watch({ startRevision: root.createRevision, rootId: root.ref!.rootId });
  const first = await take(watch, 1);
  other.close(); // cuts the HTTP/2 connection under the stream; the next attempt opens a new one
  await client.transition(root, "cancel");
  const second = await take(watch, 1);
  await watch.return();
  assert.deepEqual([first[0]?.kind, second[0]?.kind, second[0]?.toState], [EventKind.NODE_CREATED, EventKind.NODE_TRANSITIONED, "cancelled"]);
  other.close();
  await client.deleteNode(root);
});

test("a durable consumer: subscribe, ack moves its position", { timeout: 60_000 }, async () => {
  const root = await client.createRoot(orderType, `cons-${suffix}`);
  const name = `ts-consumer-${suffix}`;
  const created = await client.createConsumer(name, { start: "latest", rootId: root.ref!.rootId, kinds: [EventKind.NODE_TRANSITIONED] });
  const position = created.ackedRevision;
  await client.transition(root, "pay");
  await client.transition(root, "ship");
  const subscription = client.subscribe(name);
  const [first, second] = await take(subscription, 2);
  assert.ok(first?.event && second?.event);
  assert.deepEqual([first.event.toState, second.event.toState], ["paid", "shipped"]);
  assert.ok(first.event.revision > position);
  assert.equal((await client.ack(name, [first])), first.event.revision); // the position moved to the first event
  let consumer = await client.getConsumer(name);
  assert.equal(consumer.ackedRevision, first.event.revision);
  assert.equal(consumer.unackedCount, 1n);
  // Acking the last delivery: nothing unacknowledged is left. (The position the server reports
  // then trails by one revision until its reader moves past the last one: not asserted.)
  const acked = await client.ack(name, [second]);
  assert.ok(acked >= first.event.revision);
  assert.equal(await client.ack(name, [second]), acked); // repeating is harmless
  consumer = await client.getConsumer(name);
  assert.equal(consumer.ackedRevision, acked);
  assert.equal(consumer.unackedCount, 0n);
  await subscription.return();
  await client.deleteConsumer(name);
  await assert.rejects(client.getConsumer(name), NotFoundError);
  await client.deleteNode(root);
});

test("a worker completes a task with heartbeats, and fails one permanently", { timeout: 120_000 }, async () => {
  const slow = await client.createRoot(orderType, `work-${suffix}`);
  const doomed = await client.createRoot(orderType, `doomed-${suffix}`);
  const handled: string[] = [];
  const worker = new Worker(client, { leaseMs: 2_000, heartbeatMs: 400, concurrency: 2 }).handle(destination, async (task) => {
    const root = task.task?.reference?.node?.rootId ?? "";
    handled.push(root);
    assert.equal(new TextDecoder().decode(task.task?.payload), '{"amount": 42}');
    if (root === doomed.ref!.rootId) throw new PermanentTaskError("card declined");
    await new Promise((resolve) => setTimeout(resolve, 5_000)); // outlives the lease: heartbeats keep it
    return "ship";
  });
  const running = worker.run();
  const paid = await client.transition(slow, "pay");
  const failed = await client.transition(doomed, "pay");
  const deadline = Date.now() + 90_000;
  while (worker.stats.completed + worker.stats.failed < 2 && Date.now() < deadline) {
    await new Promise((resolve) => setTimeout(resolve, 100));
  }
  await worker.stop();
  await running;
  assert.deepEqual({ ...worker.stats }, { leased: 2, completed: 1, failed: 1, stale: 0, released: 0, lost: 0 });
  assert.deepEqual(handled.sort(), [doomed.ref!.rootId, slow.ref!.rootId].sort());
  assert.equal((await client.getNode(slow)).state, "shipped"); // the completion applied "ship"
  const taskId = (t: typeof paid): string => t.tasks[0]?.id ?? "";
  const completed = await client.services.tasks.getTask({ taskId: taskId(paid) });
  assert.equal(completed.task?.status, TaskStatus.COMPLETED);
  const dead = await client.services.tasks.getTask({ taskId: taskId(failed) });
  assert.equal(dead.task?.status, TaskStatus.DEAD_LETTER);
  assert.equal(dead.task?.lastError, "card declined");
  await client.deleteNode(slow);
  await client.deleteNode(doomed);
});

test("mutual TLS and a token", async () => {
  const tlsAddress = env("STATEKEEPER_TLS_ADDRESS");
  const tls = { ca: env("STATEKEEPER_TLS_CA"), cert: env("STATEKEEPER_TLS_CERT"), key: env("STATEKEEPER_TLS_KEY") };
  const secure = await StatekeeperClient.connect(tlsAddress, { tls, token: env("STATEKEEPER_TLS_TOKEN") });
  try {
    assert.equal((await secure.registerMachineType(ORDER)).machineType?.name, orderType);
    const root = await secure.createRoot(orderType, `tls-${suffix}`);
    assert.equal((await secure.transition(root, "pay")).node?.state, "paid");
    await secure.deleteNode(root);
  } finally {
    secure.close();
  }
  await assert.rejects(StatekeeperClient.connect(tlsAddress, { tls }), (e: unknown) => {
    assert.ok(e instanceof UnauthenticatedError, String(e));
    assert.equal(e.reason, "BEARER_TOKEN_REQUIRED");
    return true;
  });
});
