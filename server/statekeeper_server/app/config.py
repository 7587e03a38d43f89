"""Configuration from flags, environment variables and a TOML file: a flag wins over its
environment variable, which wins over the file (--config FILE or STATEKEEPER_CONFIG), which wins
over the default. Every setting is listed in docs/operations.md with its default."""

from __future__ import annotations

import argparse
import os
import tomllib
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, NoReturn

from statekeeper_server.domain.limits import Limits
from statekeeper_server.domain.tasks import TaskSettings

ENV_PREFIX = "STATEKEEPER_"


def _bool(text: str) -> bool:
    value = text.strip().lower()
    if value in ("1", "true", "yes", "on"):
        return True
    if value in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


def _failpoints(text: str) -> dict[str, str]:
    out = {}
    for item in filter(None, (p.strip() for p in text.split(","))):
        name, sep, action = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"failpoint {item!r} must be name=action")
        _act, star, times = action.partition("*")
        if star and not times.isdigit():
            raise argparse.ArgumentTypeError(f"failpoint {item!r}: the count after '*' must be a number")
        out[name] = action
    return out


@dataclass
class Config:
    listen: str = "127.0.0.1:50051"
    data_dir: str = "./statekeeper-data"
    store: str = ""
    advertise: str = ""
    shards: int = 64
    lease_s: float = 5.0
    fsync: bool = True
    request_ttl_s: float = 24 * 3600
    max_message_bytes: int = 16 * 1024 * 1024
    max_concurrent_rpcs: int = 10_000
    shutdown_grace_s: float = 10.0
    log_level: str = "INFO"
    log_format: str = "auto"
    ready_file: str = ""
    failpoints: dict[str, str] = field(default_factory=dict)
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    tokens_file: str = ""
    tokens: str = ""
    metrics_listen: str = ""
    http_listen: str = ""
    event_retention_revisions: int = 1_000_000
    event_retention_age_s: float = 0.0
    event_retention_max_revisions: int = 0
    event_compaction_interval_s: float = 30.0
    task_max_attempts: int = 5
    task_backoff_base_s: float = 1.0
    task_backoff_max_s: float = 60.0
    task_lease_s: float = 30.0
    task_max_in_flight: int = 1_000
    task_breaker_threshold: int = 5
    task_breaker_cooldown_s: float = 30.0
    task_retention_s: float = 7 * 24 * 3600
    savepoint_keep: int = 3
    backup_dir: str = "./statekeeper-backups"
    otel_traces: str = ""
    limits: Limits = field(default_factory=Limits)


_HELP = {
    "listen": "address to serve gRPC on (host:port; port 0 picks a free one)",
    "data_dir": "folder of the embedded RocksDB store (created if missing); unused with --store",
    "store": "cluster mode: postgresql://USER[:PASSWORD]@HOST:PORT/DB, shared by every server; empty: the embedded store in --data-dir",
    "advertise": "cluster mode: the host:port other servers reach this one at (empty: the listen address)",
    "shards": "cluster mode: logical shards of a new store (fixed when the store is created)",
    "lease_s": "cluster mode: shard lease time: a dead server's shards move within about this long",
    "fsync": "fsync every commit group before answering (true/false); false: a power loss or OS crash can lose acknowledged writes (embedded store only: with --store, PostgreSQL's own settings decide)",
    "request_ttl_s": "seconds a request_id's outcome is kept for retries",
    "max_message_bytes": "largest gRPC message accepted or sent, in bytes",
    "max_concurrent_rpcs": "calls in flight beyond this are refused with RESOURCE_EXHAUSTED (open streams count under --max-subscribers instead)",
    "shutdown_grace_s": "seconds in-flight calls get to finish on SIGTERM/SIGINT",
    "log_level": "DEBUG, INFO, WARNING or ERROR",
    "log_format": "json, text, or auto (json unless stderr is a terminal)",
    "ready_file": "write a JSON file with the bound address once serving (for scripts and tests)",
    "savepoint_keep": "complete savepoints kept per run when the run does not set keep_count (at least 1)",
    "backup_dir": "folder that CreateBackup (statekeeper backup) writes backups into, one folder each (embedded store only: with --store, back up with PostgreSQL's tools)",
    "event_retention_revisions": "events of at least this many newest revisions are kept",
    "event_retention_age_s": "events younger than this many seconds are kept too (0: no age rule)",
    "event_retention_max_revisions": "hard cap: durable consumers cannot hold back more revisions than this (0: no cap)",
    "event_compaction_interval_s": "seconds between event compaction runs",
    "tls_cert_file": "PEM server certificate (chain); with --tls-key-file the server speaks TLS only",
    "tls_key_file": "PEM private key of --tls-cert-file",
    "tls_client_ca_file": "PEM CA bundle: require client certificates signed by it (mutual TLS)",
    "tokens_file": "bearer tokens with permissions, JSON or 'TOKEN read|write|admin [NAME]' lines; no tokens: auth off",
    "tokens": "bearer tokens inline, 'TOKEN PERMISSION[,PERMISSION] [NAME]' separated by ';' (prefer the env var)",
    "metrics_listen": "serve Prometheus metrics at http://HOST:PORT/metrics (port 0 picks one); empty: off",
    "http_listen": "serve the web inspector at http(s)://HOST:PORT/ and metrics at /metrics (port 0 picks one; HTTPS with the TLS flags); empty: off",
    "task_max_attempts": "attempts of an outbound task (failures and expired leases) before it is dead-lettered",
    "task_backoff_base_s": "delay before an outbound task's first retry; doubles per attempt, with jitter",
    "task_backoff_max_s": "longest delay between two attempts of an outbound task",
    "task_lease_s": "default lease of an outbound task handed to a worker (heartbeats extend it)",
    "task_max_in_flight": "most outbound tasks of one destination leased at once",
    "task_breaker_threshold": "consecutive failures of a destination that open its circuit breaker (0: never)",
    "task_breaker_cooldown_s": "seconds an open breaker hands out nothing before one probe task",
    "task_retention_s": "seconds completed, stale and discarded tasks are kept (GetTask, ListTasks) before they are deleted (0: for ever)",
    "otel_traces": "OpenTelemetry traces, a span per call with its request_id: otlp (OTEL_EXPORTER_OTLP_* variables say where) or console; empty: off (needs the otel extra)",
    "failpoints": "fault injection for tests: name=action[,name=action] (see docs/operations.md)",
}

_LIMIT_HELP = {
    "max_id_length": "longest root or node id, in characters",
    "max_name_length": "longest name of a machine type, state, transition, task, destination or consumer",
    "max_request_id_length": "longest request_id",
    "max_content_type_length": "longest content type of node data",
    "max_data_bytes": "largest node data, in bytes (below --max-message-bytes)",
    "max_payload_bytes": "largest outbound task payload, in bytes (below --max-message-bytes)",
    "max_path_depth": "deepest node below its root",
    "max_children_per_node": "most children of one node",
    "max_batch_operations": "most operations in one ExecuteBatch",
    "max_states_per_type": "most states of one machine type",
    "max_transitions_per_type": "most transitions of one machine type",
    "max_tasks_per_transition": "most tasks one transition emits",
    "max_page_size": "largest page a list call returns",
    "default_page_size": "page size when a list call gives none",
    "max_deleted_nodes": "most nodes one call deletes (DeleteNode, a batch), snapshots or restores (a tree snapshot)",
    "max_state_bytes": "largest entity state of a run, in bytes",
    "max_run_entities": "most entities of one run",
    "max_subscribers": "Watch, Subscribe and LeaseTasks streams open at once (more: RESOURCE_EXHAUSTED)",
}


CONFIG_ENV = ENV_PREFIX + "CONFIG"


def _version() -> str:
    from importlib import metadata

    try:
        return metadata.version("statekeeper")
    except metadata.PackageNotFoundError:
        return "0+unknown"


def read_config_file(path: str) -> dict[str, Any]:
    """A TOML file of settings: the flag names without "--" (`data-dir` or `data_dir`), flat."""
    try:
        with open(path, "rb") as f:
            values = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"config file {path}: {e}") from None
    return {name.replace("-", "_"): value for name, value in values.items()}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        # One line that says what is wrong, not the usage of every flag above it.
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(
    environ: dict[str, str] | os._Environ[str] | None = None, file_values: dict[str, Any] | None = None
) -> argparse.ArgumentParser:
    """The `statekeeper serve` flags; each default is its environment variable, else its value
    in the config file, else the built-in default."""
    env = os.environ if environ is None else environ
    file_values = dict(file_values or {})
    defaults = Config()
    parser = _Parser(
        prog="statekeeper serve",
        description="Run the statekeeper gRPC server.",
        epilog=f"Every flag can also be set as an environment variable, e.g. {ENV_PREFIX}DATA_DIR, or "
        'in a TOML file given with --config (e.g. data-dir = "/var/lib/statekeeper"). A flag wins over '
        "its variable, a variable over the file, the file over the default.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=env.get(CONFIG_ENV, ""),
        help=f"TOML file of settings, keys named like the flags ({CONFIG_ENV})",
    )
    parser.add_argument("--version", action="version", version=f"statekeeper {_version()}")
    kinds: dict[type, Callable[[str], Any]] = {bool: _bool, int: int, float: float, str: str}
    settings = [
        (f.name, getattr(defaults, f.name), _HELP[f.name]) for f in fields(Config) if f.name != "limits"
    ]
    settings += [
        (f.name, getattr(Limits(), f.name), _LIMIT_HELP.get(f.name, "limit")) for f in fields(Limits)
    ]
    for name, default, help_text in settings:
        kind = kinds.get(type(default), _failpoints)
        value = default
        try:
            if name in file_values:
                raw = file_values.pop(name)
                value = kind(str(raw).lower() if isinstance(raw, bool) else str(raw))
            if ENV_PREFIX + name.upper() in env:
                value = kind(env[ENV_PREFIX + name.upper()])
        except (ValueError, argparse.ArgumentTypeError) as e:
            parser.error(f"{name}: {e}")
        shown = default if kind is not _failpoints else ""
        parser.add_argument(
            "--" + name.replace("_", "-"), type=kind, default=value, help=f"{help_text} (default: {shown!r})"
        )
    if file_values:
        known = ", ".join(name.replace("_", "-") for name, _, _ in settings)
        parser.error(
            f"unknown setting(s) in the config file: {', '.join(sorted(file_values))}; known: {known}"
        )
    return parser


def parse(argv: list[str] | None = None, environ: dict[str, str] | None = None) -> Config:
    env = os.environ if environ is None else environ
    first = argparse.ArgumentParser(add_help=False)
    first.add_argument("--config", default=env.get(CONFIG_ENV, ""))
    path = first.parse_known_args(argv)[0].config
    try:
        file_values = read_config_file(path) if path else {}
    except ValueError as e:
        build_parser(env).error(str(e))
    parser = build_parser(env, file_values)
    args = vars(parser.parse_args(argv))
    args.pop("config")
    limits = Limits(**{f.name: args.pop(f.name) for f in fields(Limits)})
    for name in ("max_data_bytes", "max_payload_bytes"):
        if getattr(limits, name) >= args["max_message_bytes"]:
            parser.error(f"--{name.replace('_', '-')} must be smaller than --max-message-bytes")
    if args["store"] and not args["store"].startswith(("postgresql://", "postgres://")):
        parser.error("--store must be a postgresql://USER[:PASSWORD]@HOST:PORT/DB address")
    if args["store"]:
        why = _unreachable_by_peers(args["advertise"] or args["listen"], explicit=bool(args["advertise"]))
        if why:
            parser.error(why)
    if not 1 <= args["shards"] <= 4096:
        parser.error("--shards must be between 1 and 4096")
    if args["lease_s"] < 0.5:
        parser.error("--lease-s must be at least 0.5")
    return Config(**args, limits=limits)


_WILDCARD_HOSTS = {"", "0.0.0.0", "::", "[::]", "*"}


def _unreachable_by_peers(address: str, explicit: bool) -> str:
    """Why other servers could not reach this one at `address` (empty: they can, as far as the
    address tells). A server advertising a wildcard would take shards that nobody can forward
    to, leaving their trees unwritable through every other server."""
    host, _, port = address.rpartition(":")
    flag = "--advertise" if explicit else "--listen (advertised, as no --advertise is given)"
    if host in _WILDCARD_HOSTS:
        return (
            f"{flag} {address} is a wildcard: other servers cannot reach this one there; "
            "give --advertise HOST:PORT, the address they can reach"
        )
    if explicit and (not port.isdigit() or int(port) == 0):
        return f"--advertise {address} needs the port other servers reach this one at (HOST:PORT, not 0)"
    return ""


def _ms(seconds: float) -> int:
    return max(0, int(seconds * 1000))


def task_settings(config: Config) -> TaskSettings:
    """The task executors' settings from the configuration (values made sane)."""
    ms = _ms
    return TaskSettings(
        max_attempts=max(1, config.task_max_attempts),
        backoff_base_ms=ms(config.task_backoff_base_s),
        backoff_max_ms=ms(config.task_backoff_max_s),
        lease_ms=max(1, ms(config.task_lease_s)),
        max_in_flight=max(1, config.task_max_in_flight),
        breaker_threshold=max(0, config.task_breaker_threshold),
        breaker_cooldown_ms=ms(config.task_breaker_cooldown_s),
        finished_retention_ms=ms(config.task_retention_s),
    )
