"""statekeeper server: durable hierarchical state machines over gRPC.

Layers (dependencies point inwards):
    domain/   pure model and rules; no gRPC, protobuf or RocksDB
    storage/  the durable store (RocksDB via rocksdict) and record encoding
    engine/   the write path: pending overlay, group committer, durable read views
    service/  thin gRPC servicers and the error-to-status table
    app/      composition root: configuration, server, health, reflection, signals
"""

__version__ = "0.1.0"
