"""HTML rendering: Jinja2 templates from the package (autoescaped: every value a template shows
is escaped unless it is Markup made here), and the small formatters the pages share."""

from __future__ import annotations

import datetime
import json
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import jinja2
from markupsafe import Markup

from statekeeper.v1 import common_pb2, event_pb2, task_pb2

TEMPLATES = Path(__file__).parent / "templates"
DATA_SHOWN_BYTES = 256 * 1024  # text and JSON beyond this are cut (the API returns it all)
HEX_SHOWN_BYTES = 4096


def when(ms: int) -> str:
    """Epoch milliseconds as UTC date and time; a dash for 0 (not set)."""
    if not ms:
        return "\u2013"
    t = datetime.datetime.fromtimestamp(ms / 1000, tz=datetime.UTC)
    return t.strftime("%Y-%m-%d %H:%M:%S.") + f"{t.microsecond // 1000:03d}Z"


def duration(ms: int) -> str:
    s = max(0, ms) // 1000
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours}h {minutes}m"
    if hours:
        return f"{hours}h {minutes}m {s}s"
    return f"{minutes}m {s}s" if minutes else f"{s}s"


def kind_name(kind: int) -> str:
    """EVENT_KIND_NODE_TRANSITIONED -> node_transitioned (as the CLI shows it)."""
    return event_pb2.EventKind.Name(kind).removeprefix("EVENT_KIND_").lower()  # type: ignore[arg-type]


def status_name(status: int) -> str:
    return task_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()  # type: ignore[arg-type]


def task_kind_name(kind: int) -> str:
    return task_pb2.TaskKind.Name(kind).removeprefix("TASK_KIND_").lower()  # type: ignore[arg-type]


def ref_text(ref: common_pb2.NodeRef) -> str:
    """order-1/item:i-1, the CLI's notation."""
    return "/".join([ref.root_id, *(f"{k.type}:{k.id}" for k in ref.path)])


def ref_query(ref: common_pb2.NodeRef, **extra: Any) -> str:
    """The query string that addresses a node: root=ID&p=type:id&p=... (types have no ':')."""
    pairs: list[tuple[str, Any]] = [("root", ref.root_id), *(("p", f"{k.type}:{k.id}") for k in ref.path)]
    pairs += [(k, v) for k, v in extra.items() if v not in (None, "")]
    return urlencode(pairs)


def query(**params: Any) -> str:
    return urlencode([(k, v) for k, v in params.items() if v not in (None, "")], doseq=True)


def show_data(value: bytes, content_type: str) -> dict[str, Any]:
    """How to show node data: {"mode": json|text|hex|empty, "text": ..., "cut": bytes not shown}."""
    if not value:
        return {"mode": "empty", "text": "", "cut": 0}
    ct = content_type.split(";", 1)[0].strip().lower()
    shown = value[:DATA_SHOWN_BYTES]
    if ct == "application/json" or ct.endswith("+json"):
        try:
            text = json.dumps(json.loads(value), indent=2, ensure_ascii=False)
            return {"mode": "json", "text": text[: DATA_SHOWN_BYTES * 2], "cut": 0}
        except ValueError:
            pass  # not valid JSON after all: shown as text or hex below
    textual = ct.startswith("text/") or ct in ("application/xml", "application/yaml") or ct.endswith("+xml")
    try:
        text = shown.decode()
        if textual or not ct or all(c.isprintable() or c in "\n\r\t" for c in text):
            return {"mode": "text", "text": text, "cut": len(value) - len(shown)}
    except UnicodeDecodeError:
        pass
    return {
        "mode": "hex",
        "text": hexdump(value[:HEX_SHOWN_BYTES]),
        "cut": max(0, len(value) - HEX_SHOWN_BYTES),
    }


def hexdump(data: bytes) -> str:
    lines = []
    for offset in range(0, len(data), 16):
        chunk = data[offset : offset + 16]
        hexes = " ".join(f"{b:02x}" for b in chunk)
        text = "".join(chr(b) if 32 <= b < 127 else "." for b in chunk)
        lines.append(f"{offset:08x}  {hexes:<47}  {text}")
    return "\n".join(lines)


def environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        when=when,
        duration=duration,
        kind=kind_name,
        status=status_name,
        task_kind=task_kind_name,
        ref=ref_text,
    )
    env.globals.update(ref_query=ref_query, query=query, Markup=Markup)
    return env
