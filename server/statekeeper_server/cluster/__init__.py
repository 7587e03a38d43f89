"""Cluster mode: several servers over one PostgreSQL store. membership.py keeps this server's
shard leases (fenced by generation) and balances shards over the live servers; events.py feeds
every server's hub with every server's events, in revision order."""
