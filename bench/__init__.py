"""The statekeeper benchmark: `scripts/bench` (or `python -m bench`).

It starts the statekeeper server as its own process (real RocksDB, fsync on), drives it from a
separate load process, measures the machine's own ceilings in the same run (a bare grpc.aio
server, raw rocksdict synced writes) and a throwaway PostgreSQL doing the same logical work
(section p, the reference), and reports medians with each figure's ratio to its ceiling and to
its PostgreSQL counterpart as a table, JSON (bench-results/bench.json) and a chart
(bench-results/bench.png), with the targets met or not.

Adding a section = adding a module under bench/sections/ with `KEY`, `TITLE` and
`run(ctx) -> Section`, and listing it in bench/sections/__init__.py:SECTIONS.
"""
