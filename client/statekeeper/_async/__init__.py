"""The async client: the source of truth. _sync/ is generated from it (scripts/gen_sync_client.py)."""
