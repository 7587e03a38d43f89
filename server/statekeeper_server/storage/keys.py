"""Order-preserving binary keys.

Node keys nest, so a subtree is one key range and a collection is one prefix:
    root   = root_id 0x00
    child  = parent 0x01 type 0x00 id 0x00
Ids and type names never contain control characters (domain/validation.py), so 0x00 and 0x01 are
unambiguous. A node's descendants are the keys in [key 0x01, key 0x02); seeking to key 0x02 skips
a whole subtree, which is how a collection is listed without reading grandchildren.
Numbers are big-endian so byte order is numeric order.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable

from statekeeper_server.domain.model import NodeAddress

_U64 = struct.Struct(">Q")
_U64_U32 = struct.Struct(">QI")
_U32 = struct.Struct(">I")

SUBTREE_START = b"\x01"
SUBTREE_END = b"\x02"

META_FORMAT_VERSION = b"format_version"
META_REVISION = b"revision"


def u64(n: int) -> bytes:
    return _U64.pack(n)


def read_u64(b: bytes) -> int:
    return int(_U64.unpack(b)[0])


@functools.lru_cache(maxsize=65_536)
def node_key(address: NodeAddress) -> bytes:
    # One encode of the joined text: UTF-8 of a concatenation is the concatenation of the parts.
    path = address.path
    if not path:
        return (address.root_id + "\x00").encode()
    return "".join([address.root_id, "\x00", *[f"\x01{t}\x00{i}\x00" for t, i in path]]).encode()


def collection_prefix(parent: NodeAddress, type_name: str) -> bytes:
    return node_key(parent) + b"\x01" + type_name.encode() + b"\x00"


def node_address(key: bytes) -> NodeAddress:
    root, _, rest = key.partition(b"\x00")
    path = []
    while rest:
        # rest = 0x01 type 0x00 id 0x00 ...
        type_name, _, rest = rest[1:].partition(b"\x00")
        node_id, _, rest = rest.partition(b"\x00")
        path.append((type_name.decode(), node_id.decode()))
    return NodeAddress(root.decode(), tuple(path))


def type_key(name: str, version: int) -> bytes:
    return name.encode() + b"\x00" + _U32.pack(version)


seq_key: Callable[[int, int], bytes] = _U64_U32.pack
"""seq_key(revision, index): key of the index-th task or event of a revision (the struct's own
pack: no call of ours per key)."""


seq_key_parts: Callable[[bytes], tuple[int, int]] = _U64_U32.unpack
"""(revision, index) of a seq_key (the struct's own unpack: no call of ours per key)."""


def task_key(task_id: str) -> bytes | None:
    """Task ids are "<revision>-<index>"; None when the id is not of that form."""
    revision, sep, index = task_id.partition("-")
    if not sep or not revision.isdigit() or not index.isdigit():
        return None
    r, i = int(revision), int(index)
    if r >= 1 << 64 or i >= 1 << 32:
        return None
    return seq_key(r, i)


def expiry_key(expires_ms: int, request_id: str) -> bytes:
    return u64(expires_ms) + request_id.encode()


@functools.lru_cache(maxsize=4096)  # names and states are few; a node's index key uses one per write
def node_index_prefix(type_name: str, terminal: bool | None = None, state: str | None = None) -> bytes:
    """Prefix of the (type, active/terminal, state) index; narrower with each argument given."""
    out = type_name.encode() + b"\x00"
    if terminal is None:
        return out
    out += b"T" if terminal else b"A"
    if state is None:
        return out
    return out + state.encode() + b"\x00"


def node_index_key(type_name: str, terminal: bool, state: str, node: bytes) -> bytes:
    return node_index_prefix(type_name, terminal, state) + node


# -- savepoints ---------------------------------------------------------------------------------
# Run and entity ids have no control characters (domain/validation.py), so 0x00 ends them.
#   RUNS              run 0x00                          -> run header (codec.encode_run)
#                     run 0x00 0x01                     -> the run's entity ids
#   RUN_ENTITIES      run 0x00 entity                   -> entity progress
#   SAVEPOINT_PARTS   run 0x00 entity 0x00 upto(u64)    -> state bytes (upto 0: the initial state,
#                                                          upto 2^64-1: the current state set by
#                                                          UpdateEntityStates)
#   SAVEPOINTS        run 0x00 timestamp(u64)           -> savepoint header (codec.encode_savepoint)
#   SAVEPOINT_STATES  run 0x00 timestamp(u64) entity    -> state bytes
#   TREE_SNAPSHOTS    root 0x00 name                    -> snapshot header
#   TREE_SNAPSHOT_ITEMS root 0x00 name 0x00 "n" node key -> node record
#                       root 0x00 name 0x00 "t" task key -> task record


def prefix_end(prefix: bytes) -> bytes:
    """The smallest key greater than every key starting with prefix (which must hold a byte
    below 0xff: every prefix here starts with an id and its 0x00)."""
    stem = prefix.rstrip(b"\xff")
    return stem[:-1] + bytes([stem[-1] + 1])


def run_key(run_id: str) -> bytes:
    return run_id.encode() + b"\x00"


def run_entity_ids_key(run_id: str) -> bytes:
    return run_key(run_id) + b"\x01"


def run_entity_key(run_id: str, entity_id: str) -> bytes:
    return run_key(run_id) + entity_id.encode()


def savepoint_part_key(run_id: str, entity_id: str, upto: int) -> bytes:
    return run_key(run_id) + entity_id.encode() + b"\x00" + u64(upto)


CURRENT_STATE_UPTO = 2**64 - 1
"""The `upto` of an entity's current state (timestamps are int64: never a savepoint's)."""


def entity_update_key(run_id: str, entity_id: str) -> bytes:
    """Where an entity's current state (UpdateEntityStates) is kept until a run forgets it."""
    return savepoint_part_key(run_id, entity_id, CURRENT_STATE_UPTO)


def savepoint_key(run_id: str, timestamp: int) -> bytes:
    return run_key(run_id) + u64(timestamp)


def savepoint_state_key(run_id: str, timestamp: int, entity_id: str) -> bytes:
    return savepoint_key(run_id, timestamp) + entity_id.encode()


def tree_snapshot_key(root_id: str, name: str) -> bytes:
    return root_id.encode() + b"\x00" + name.encode()


def tree_snapshot_items_prefix(root_id: str, name: str) -> bytes:
    return tree_snapshot_key(root_id, name) + b"\x00"
