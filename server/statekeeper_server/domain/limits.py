"""Limits on what a request may ask for. Configurable (app/config.py); defaults documented in the README."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Limits:
    max_id_length: int = 256
    max_name_length: int = 128
    max_request_id_length: int = 128
    max_content_type_length: int = 128
    max_data_bytes: int = 1024 * 1024
    max_payload_bytes: int = 256 * 1024
    max_path_depth: int = 16
    max_children_per_node: int = 100_000
    max_batch_operations: int = 10_000
    max_states_per_type: int = 1_000
    max_transitions_per_type: int = 1_000
    max_tasks_per_transition: int = 32
    max_page_size: int = 1_000
    default_page_size: int = 100
    max_deleted_nodes: int = 100_000
    max_state_bytes: int = 1024 * 1024
    max_run_entities: int = 100_000
    # Long-lived streams open at once on the server: Watch, Subscribe and LeaseTasks.
    max_subscribers: int = 1_000
