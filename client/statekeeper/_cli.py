"""Kept for `python -m statekeeper._cli` and `from statekeeper._cli import main`: the CLI now
lives in statekeeper.cli (one module per command group)."""

import sys

from statekeeper.cli import build_parser, main

__all__ = ["build_parser", "main"]

if __name__ == "__main__":
    sys.exit(main())
