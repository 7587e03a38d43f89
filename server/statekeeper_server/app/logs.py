"""Structured logs: JSON lines when stderr is not a terminal, readable text when it is.

Every record made while an RPC is being handled carries that call's `request_id`, `method`
and, with authentication on, `principal` (the token's name) — taken from the context variables
that entrypoints/grpc/handler.py sets for each call. A JSON line looks like

    {"ts": "...", "level": "info", "logger": "statekeeper.rpc", "msg": "...",
     "request_id": "4f1c...", "method": "/statekeeper.v1.NodeService/GetNode", "code": "NOT_FOUND"}
"""

from __future__ import annotations

import json
import logging
import sys
import time

from statekeeper_server.entrypoints.grpc.handler import current_method, current_principal, current_request_id

_FIELDS = ("request_id", "method", "principal", "code", "reason", "duration_ms", "peer")


class CallContextFilter(logging.Filter):
    """Copies the current call's request id, method and principal onto each record."""

    def filter(self, record: logging.LogRecord) -> bool:
        for name, var in (
            ("request_id", current_request_id),
            ("method", current_method),
            ("principal", current_principal),
        ):
            if getattr(record, name, None) is None:
                value = var.get()
                if value:
                    setattr(record, name, value)
        return True


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, object] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None and value != "":
                out[key] = round(value, 3) if isinstance(value, float) else value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        request_id = getattr(record, "request_id", None)
        return f"{text} [request_id={request_id}]" if request_id else text


def setup(level: str, fmt: str) -> None:
    use_json = fmt == "json" or (fmt == "auto" and not sys.stderr.isatty())
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if use_json else TextFormatter())
    handler.addFilter(CallContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
