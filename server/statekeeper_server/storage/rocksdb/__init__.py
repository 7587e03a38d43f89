"""The embedded store: RocksDB through rocksdict."""

from statekeeper_server.storage.rocksdb.store import FORMAT_VERSION, RocksStore

__all__ = ["FORMAT_VERSION", "RocksStore"]
