// A statekeeper client in Node.js: register a machine type, create a tree, transition it, and
// watch the events - using @grpc/grpc-js and @grpc/proto-loader with proto/ as it is.
//
//   node client.js [host:port]        (default 127.0.0.1:50051, or STATEKEEPER_ADDRESS)
//
// Prints one JSON line per step; exits non-zero on any unexpected outcome.
"use strict";

const path = require("path");
const grpc = require("@grpc/grpc-js");
const protoLoader = require("@grpc/proto-loader");

const PROTO_ROOT = path.resolve(__dirname, "..", "..", "proto");
const definition = protoLoader.loadSync(
  ["statekeeper/v1/machine_type.proto", "statekeeper/v1/node.proto", "statekeeper/v1/event.proto"],
  { includeDirs: [PROTO_ROOT], keepCase: false, longs: Number, enums: String, defaults: true, oneofs: true },
);
const v1 = grpc.loadPackageDefinition(definition).statekeeper.v1;

const address = process.argv[2] || process.env.STATEKEEPER_ADDRESS || "127.0.0.1:50051";
const credentials = grpc.credentials.createInsecure();
const types = new v1.MachineTypeService(address, credentials);
const nodes = new v1.NodeService(address, credentials);
const events = new v1.EventService(address, credentials);

// Promisify a unary method: resolves with the response, rejects with the gRPC error.
function call(client, method, request) {
  return new Promise((resolve, reject) => {
    client[method](request, { deadline: Date.now() + 10000 }, (err, response) =>
      err ? reject(err) : resolve(response),
    );
  });
}

function log(step, value) {
  console.log(JSON.stringify({ step, ...value }));
}

async function main() {
  const suffix = `${process.pid}-${Date.now()}`;
  const typeName = `door${process.pid}`;
  await call(types, "registerMachineType", {
    machineType: {
      name: typeName,
      version: 1,
      states: ["closed", "open", "locked"],
      initialState: "closed",
      terminalStates: [],
      transitions: [
        { name: "open", sources: ["closed"], destination: "open" },
        { name: "close", sources: ["open"], destination: "closed" },
        { name: "lock", sources: ["closed"], destination: "locked" },
      ],
    },
  });
  log("registered", { type: typeName });

  const rootId = `house-${suffix}`;
  const created = await call(nodes, "createRoot", { type: typeName, id: rootId });
  const child = await call(nodes, "addChild", {
    parent: { rootId },
    key: { type: typeName, id: "back-door" },
    data: { value: Buffer.from('{"colour":"green"}'), contentType: "application/json" },
  });
  log("created", { root: created.node.ref.rootId, revision: created.revision, child: child.node.ref.path[0].id });

  // Watch this tree's events from the root's creation: history first, then live.
  const seen = [];
  const watch = events.watch({ startRevision: created.revision, filter: { rootId } });
  const watched = new Promise((resolve, reject) => {
    watch.on("data", (message) => {
      for (const e of message.events) {
        seen.push(`${e.kind}:${e.toState}`);
        if (e.kind === "EVENT_KIND_NODE_TRANSITIONED" && e.toState === "locked") resolve();
      }
    });
    watch.on("error", (err) => {
      if (err.code !== grpc.status.CANCELLED) reject(err);
    });
  });

  const opened = await call(nodes, "applyTransition", { node: { rootId }, transition: "open" });
  log("transitioned", { state: opened.node.state, transitionCount: opened.node.transitionCount });

  // An invalid transition: FAILED_PRECONDITION with the reason and the allowed transitions.
  try {
    await call(nodes, "applyTransition", { node: { rootId }, transition: "lock" });
    throw new Error("lock from open should have been refused");
  } catch (err) {
    if (err.code !== grpc.status.FAILED_PRECONDITION) throw err;
    log("refused", { code: "FAILED_PRECONDITION", details: err.details });
  }
  await call(nodes, "applyTransition", { node: { rootId }, transition: "close", expectedTransitionCount: 1 });
  await call(nodes, "applyTransition", { node: { rootId }, transition: "lock" });

  await Promise.race([
    watched,
    new Promise((_, reject) => setTimeout(() => reject(new Error(`watch saw only ${seen}`)), 10000)),
  ]);
  watch.cancel();
  log("watched", { events: seen });
  const node = await call(nodes, "getNode", { node: { rootId } });
  log("final", { state: node.node.state, transitionCount: node.node.transitionCount });
  types.close();
  nodes.close();
  events.close();
}

main().catch((err) => {
  console.error(`error: ${err.code !== undefined ? `gRPC ${err.code} ` : ""}${err.details || err.message}`);
  process.exit(1);
});
