"""Runbox runs and their savepoints; tree snapshots."""
