"""`statekeeper serve` / `python -m statekeeper_server`."""

from __future__ import annotations

import asyncio
import logging
import sys

from statekeeper_server.app import config as config_mod
from statekeeper_server.app import logs
from statekeeper_server.app.security import ConfigError
from statekeeper_server.app.server import serve
from statekeeper_server.storage.base import StoreError


def main(argv: list[str] | None = None) -> int:
    cfg = config_mod.parse(argv)
    logs.setup(cfg.log_level, cfg.log_format)
    # The WAL-sync thread must get the GIL back promptly when its fsync returns; the default
    # 5 ms switch interval would add up to 5 ms to every contended commit.
    sys.setswitchinterval(0.0005)
    try:
        return asyncio.run(serve(cfg))
    except ConfigError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        return 2
    except StoreError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        logging.getLogger("statekeeper").error("cannot start: %s", e)
        print(f"statekeeper: cannot start: {e}", file=sys.stderr)
        return 2
