"""statekeeper server: durable hierarchical state machines over gRPC.

Layers, dependencies pointing inwards (tests/test_layers.py checks the rules):
    domain/       pure model and rules; imports nothing of the server, no gRPC, SQL or RocksDB
    storage/      the store interface (base.py), keys, record codec, indexes; one folder per
                  backend (rocksdb/: embedded, postgres/: cluster mode) that only app/ picks
    core/         the commit core: Commit, the group committer, durable read views
    features/     tasks/, events/, savepoints/: built on core/
    entrypoints/  grpc/: the API's servicers (convert, call core and features, convert back),
                  routing and forwarding of calls to their shard's owner (cluster mode)
    cluster/      cluster mode: shard leases and rebalancing, every server's events tailed in
                  order (imports the PostgreSQL backend, never gRPC)
    app/          the composition root: configuration, the server, health, reflection, signals
"""

__version__ = "0.1.0"
