"""Generated from proto/statekeeper/v1 by scripts/gen_protos.py. Do not edit."""
