"""The durable store: a small interface (base.py), the encoding of keys (keys.py), records
(codec.py) and secondary indexes (indexes.py), and one folder per backend (rocksdb/)."""
