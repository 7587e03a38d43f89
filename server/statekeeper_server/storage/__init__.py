"""The durable store: a small interface (base.py), RocksDB behind it (rocks.py), and the
encoding of keys (keys.py) and records (codec.py)."""
