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

import struct

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


def node_key(address: NodeAddress) -> bytes:
    parts = [address.root_id.encode(), b"\x00"]
    for type_name, node_id in address.path:
        parts += (b"\x01", type_name.encode(), b"\x00", node_id.encode(), b"\x00")
    return b"".join(parts)


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


def type_key_parts(key: bytes) -> tuple[str, int]:
    return key[:-5].decode(), int(_U32.unpack(key[-4:])[0])


def seq_key(revision: int, index: int) -> bytes:
    """Key of the index-th task or event of a revision."""
    return _U64_U32.pack(revision, index)


def seq_key_parts(key: bytes) -> tuple[int, int]:
    revision, index = _U64_U32.unpack(key)
    return int(revision), int(index)


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
