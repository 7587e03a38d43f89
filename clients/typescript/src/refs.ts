// Node references and data, in the forms the hand-written client accepts.
import { create } from "@bufbuild/protobuf";
import { DataSchema, NodeRefSchema, type Data, type NodeRef } from "./gen/statekeeper/v1/common_pb.js";
import type { Node } from "./gen/statekeeper/v1/node_pb.js";

/**
 * Where a node is: "order-1" (a root), "order-1/item:i-1/part:p-2" (the notation the CLI prints),
 * `{ rootId, path: [{ type, id }] }` (for ids the notation cannot express), or a Node.
 */
export type RefLike = string | { rootId: string; path?: ReadonlyArray<{ type: string; id: string }> } | Node;

/** The NodeRef of a RefLike; a string is parsed as `root[/type:id]...`. */
export function toRef(value: RefLike): NodeRef {
  if (typeof value === "string") return parseRef(value);
  if ("rootId" in value) {
    return create(NodeRefSchema, { rootId: value.rootId, path: (value.path ?? []).map(({ type, id }) => ({ type, id })) });
  }
  if (value.ref === undefined) throw new TypeError("the node has no ref");
  return value.ref;
}

export function parseRef(text: string): NodeRef {
  const [rootId = "", ...rest] = text.split("/");
  const path = rest.map((part) => {
    const colon = part.indexOf(":");
    if (colon <= 0 || colon === part.length - 1) throw new TypeError(`path element ${JSON.stringify(part)} must be type:id`);
    return { type: part.slice(0, colon), id: part.slice(colon + 1) };
  });
  if (!rootId) throw new TypeError(`node reference ${JSON.stringify(text)} has no root id`);
  return create(NodeRefSchema, { rootId, path });
}

/** "order-1/item:i-1": the notation parseRef reads and the CLI prints. */
export function formatRef(ref: NodeRef): string {
  return [ref.rootId, ...ref.path.map((k) => `${k.type}:${k.id}`)].join("/");
}

/** Node data: bytes, or a string sent as UTF-8. */
export type DataLike = Uint8Array | string;

export function toData(value: DataLike | undefined, contentType = ""): Data | undefined {
  if (value === undefined) return undefined;
  const bytes = typeof value === "string" ? new TextEncoder().encode(value) : value;
  return create(DataSchema, { value: bytes, contentType });
}
