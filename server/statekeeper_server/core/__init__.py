"""The commit core: every write becomes one Commit (engine.py), handed to the single committer
(committer.py) that writes whole groups atomically and durably; views.py reads durable state.
May import domain/ and the storage interface (storage/base.py, keys, codec, indexes), never a
store backend, a feature, or an entrypoint."""
