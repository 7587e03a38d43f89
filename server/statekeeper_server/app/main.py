"""`statekeeper serve` / `python -m statekeeper_server`."""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import sys

from statekeeper_server.app import config as config_mod
from statekeeper_server.app import logs
from statekeeper_server.app.security import ConfigError
from statekeeper_server.app.server import serve
from statekeeper_server.storage.base import StoreError, StoreUnreachable

EX_TEMPFAIL = 75  # sysexits.h: a temporary failure, worth trying again


def listen_address_in_use(listen: str) -> str | None:
    """Why `listen` cannot be bound, when another process holds it; None when it looks free.
    Checked before anything else starts, so a busy port creates no data folder. (The real bind
    comes later and can still fail: that is reported too, only after the store opened.)"""
    host, _, port = listen.rpartition(":")
    if not port.isdigit() or int(port) == 0:
        return None
    try:
        infos = socket.getaddrinfo(host.strip("[]") or None, int(port), type=socket.SOCK_STREAM)
    except OSError:
        return None  # gRPC reports an unresolvable host itself
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds
            try:
                probe.bind(address)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    return f"{listen} is already in use (another statekeeper? choose another --listen)"
                if e.errno == errno.EACCES:
                    return f"no permission to listen on {listen} (ports below 1024 need privileges)"
    return None


def main(argv: list[str] | None = None) -> int:
    cfg = config_mod.parse(argv)
    busy = listen_address_in_use(cfg.listen)
    if busy is not None:
        print(f"statekeeper: cannot start: {busy}", file=sys.stderr)
        return 2
    logs.setup(cfg.log_level, cfg.log_format)
    if cfg.otel_traces:
        try:
            from statekeeper_server.app import tracing
        except ImportError as e:
            print(
                f"statekeeper: cannot start: --otel-traces needs the otel extra ({e.name} is missing): pip install 'statekeeper[otel]'",
                file=sys.stderr,
            )
            return 2
        tracing.setup(cfg.otel_traces)
    # The WAL-sync thread must get the GIL back promptly when its fsync returns (it takes it a
    # few times per commit group): each time it waits up to this interval while the loop is
    # busy. Python's default 5 ms would add up to 20 ms to every contended commit; 0.5 ms
    # still made a commit group's synced write take 3 ms at the median under load.
    sys.setswitchinterval(0.0001)
    try:
        return asyncio.run(serve(cfg))
    except ConfigError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        # A store that cannot be reached now may be back soon: a supervisor should start the
        # server again (deploy/statekeeper.service does not restart on 2, a configuration error).
        return EX_TEMPFAIL if isinstance(e, StoreUnreachable) else 2
    except OSError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        return 2
