"""`python -m statekeeper`: the CLI."""

import sys

from statekeeper.cli import main

sys.exit(main())
