// statekeeper from Node.js with the TypeScript client (clients/typescript): register a machine
// type, build a small tree, transition it (one refused), follow it with a durable consumer, then
// delete what it created and exit.
//
//   node client.js [host:port]        (default 127.0.0.1:50051, or STATEKEEPER_ADDRESS)
//
// Prints one JSON line per step; exits non-zero on any unexpected outcome.
import { EventKind, FailedPreconditionError, StatekeeperClient } from "@statekeeper/client";

const address = process.argv[2] || process.env.STATEKEEPER_ADDRESS || "127.0.0.1:50051";
const log = (step, value) => console.log(JSON.stringify({ step, ...value }));
const suffix = `${process.pid}-${Date.now()}`;

async function main() {
  const client = await StatekeeperClient.connect(address);
  const consumer = `door-events-${suffix}`;
  const house = `house-${suffix}`;
  try {
    await client.registerMachineType({
      name: "door",
      version: 1,
      states: ["closed", "open", "locked"],
      initialState: "closed",
      transitions: [
        { name: "open", sources: ["closed"], destination: "open" },
        { name: "close", sources: ["open"], destination: "closed" },
        { name: "lock", sources: ["closed"], destination: "locked" },
      ],
    });
    const root = await client.createRoot("door", house);
    await client.addChild(root, "door", "back-door", { data: '{"colour":"green"}', contentType: "application/json" });
    await client.createConsumer(consumer, { rootId: house, kinds: [EventKind.NODE_TRANSITIONED] });
    log("created", { root: house, child: `${house}/door:back-door` });

    const opened = await client.transition(root, "open", { expectedTransitionCount: 0 });
    log("transitioned", { state: opened.node.state, transitionCount: Number(opened.node.transitionCount) });
    try {
      await client.transition(root, "lock");
      throw new Error("lock from open should have been refused");
    } catch (e) {
      if (!(e instanceof FailedPreconditionError)) throw e;
      log("refused", { code: e.codeName, reason: e.reason, currentState: e.metadata.current_state });
    }
    await client.transition(root, "close", { expectedTransitionCount: 1 });
    await client.transition(root, "lock");

    const seen = [];
    for await (const delivery of client.subscribe(consumer)) {
      seen.push(delivery.event.toState);
      const position = await client.ack(consumer, [delivery]);
      if (delivery.event.toState === "locked") {
        log("consumed", { states: seen, position: Number(position) });
        break;
      }
    }
  } finally {
    await client.deleteConsumer(consumer).catch(() => undefined);
    await client.deleteNode(house).catch(() => undefined);
    log("cleaned up", { root: house, consumer });
    client.close();
  }
}

main().catch((e) => {
  console.error(`error: ${e.message}`);
  process.exitCode = 1;
});
