"""The web inspector: HTML pages served by the server itself (--http-listen), reaching the
server only through its gRPC API (api.py) over a private unix-socket port."""

from statekeeper_server.entrypoints.http.web import Inspector, InspectorSettings

__all__ = ["Inspector", "InspectorSettings"]
