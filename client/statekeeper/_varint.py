"""Protobuf varints, for the messages the SDK and the server assemble from encoded parts
(ExecuteStream envelopes, events, answers): by table, 14 bits at a time. SMALL[n] is n's whole
varint (one or two bytes: call ids, counts, lengths, tags); revisions, times and nanoseconds (four
to six bytes) are two or three lookups instead of a loop."""

from __future__ import annotations

_U64 = (1 << 64) - 1


def encode_varint(value: int) -> bytes:
    """The varint of any int (a negative one as int32/int64 encode it: ten bytes)."""
    if value < 0:
        value &= _U64
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


SMALL = [encode_varint(i) for i in range(1 << 14)]
_MORE = [bytes(((i & 0x7F) | 0x80, (i >> 7) | 0x80)) for i in range(1 << 14)]  # 14 bits, more follow


def varint(value: int) -> bytes:
    if 0 <= value < 1 << 14:
        return SMALL[value]
    if 0 < value < 1 << 28:
        return _MORE[value & 0x3FFF] + SMALL[value >> 14]
    if 0 < value < 1 << 42:
        return _MORE[value & 0x3FFF] + _MORE[value >> 14 & 0x3FFF] + SMALL[value >> 28]
    return encode_varint(value)
