"""The write path and durable reads: pending overlay, group committer, engine facade."""
