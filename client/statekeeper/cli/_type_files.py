"""Machine types from YAML or JSON files (`statekeeper types register FILE`).

    name: order
    version: 1
    description: an order          # optional
    states: [new, paid, shipped]
    initial_state: new
    terminal_states: [shipped]     # optional
    transitions:
      - name: pay
        from: [new]                # or one state: from: new
        to: paid
        tasks:                     # optional
          - outbound: charge       # an outbound task for workers of `destination`
            destination: payments
            payload: "{}"          # optional, text
          - timer: remind          # a timer applying `transition` after delay_ms
            transition: cancel
            delay_ms: 60000

A file may hold several types: a list, or several YAML documents separated by `---`.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from statekeeper._types import MachineType, Outbound, Timer, Transition

_TYPE_KEYS = {"name", "version", "description", "states", "initial_state", "terminal_states", "transitions"}
_TRANSITION_KEYS = {"name", "from", "to", "tasks"}
_OUTBOUND_KEYS = {"outbound", "destination", "payload"}
_TIMER_KEYS = {"timer", "transition", "delay_ms", "deadline_from_request"}


class TypeFileError(ValueError):
    pass


def _keys(value: Any, allowed: set[str], required: set[str], where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TypeFileError(f"{where} must be a mapping with keys {', '.join(sorted(allowed))}")
    unknown = set(value) - allowed
    if unknown:
        raise TypeFileError(
            f"{where}: unknown key(s) {', '.join(sorted(map(str, unknown)))}; valid: {', '.join(sorted(allowed))}"
        )
    missing = required - set(value)
    if missing:
        raise TypeFileError(f"{where}: missing {', '.join(sorted(missing))}")
    return value


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        return [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise TypeFileError(f"{where} must be a name or a list of names")
    return list(value)


def _task(value: Any, where: str) -> Timer | Outbound:
    if isinstance(value, dict) and "outbound" in value:
        v = _keys(value, _OUTBOUND_KEYS, {"outbound", "destination"}, where)
        payload = v.get("payload", "")
        return Outbound(
            str(v["outbound"]),
            str(v["destination"]),
            payload.encode() if isinstance(payload, str) else payload,
        )
    if isinstance(value, dict) and "timer" in value:
        v = _keys(value, _TIMER_KEYS, {"timer", "transition"}, where)
        return Timer(
            str(v["timer"]),
            str(v["transition"]),
            int(v.get("delay_ms", 0)),
            bool(v.get("deadline_from_request", False)),
        )
    raise TypeFileError(
        f"{where} must be an outbound task (outbound, destination) or a timer (timer, transition)"
    )


def machine_type(value: Any, where: str = "machine type") -> MachineType:
    v = _keys(value, _TYPE_KEYS, {"name", "version", "states", "initial_state"}, where)
    where = f"machine type {v['name']!r}"
    transitions = []
    for i, t in enumerate(v.get("transitions") or []):
        at = f"{where} transitions[{i}]"
        t = _keys(t, _TRANSITION_KEYS, {"name", "from", "to"}, at)
        tasks = [_task(k, f"{at} tasks[{j}]") for j, k in enumerate(t.get("tasks") or [])]
        transitions.append(Transition(str(t["name"]), _names(t["from"], f"{at} from"), str(t["to"]), tasks))
    if not isinstance(v["version"], int):
        raise TypeFileError(f"{where}: version must be a whole number")
    return MachineType(
        name=str(v["name"]),
        version=v["version"],
        states=_names(v["states"], f"{where} states"),
        initial_state=str(v["initial_state"]),
        transitions=transitions,
        terminal_states=_names(v.get("terminal_states") or [], f"{where} terminal_states"),
        description=str(v.get("description", "")),
    )


def load(path: str) -> list[MachineType]:
    """The machine types in a .json, .yaml or .yml file."""
    text = sys.stdin.read() if path == "-" else Path(path).read_text()
    if path.endswith(".json") or text.lstrip().startswith(("{", "[")):
        try:
            docs: list[Any] = [json.loads(text)]
        except json.JSONDecodeError as e:
            raise TypeFileError(f"{path}: not valid JSON: {e}") from None
    else:
        try:
            import yaml
        except ImportError:
            raise TypeFileError(
                f"{path}: reading YAML needs PyYAML: pip install 'statekeeper[cli]' (or give the type as JSON)"
            ) from None
        try:
            docs = [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError as e:
            raise TypeFileError(f"{path}: not valid YAML: {e}") from None
    types: list[MachineType] = []
    for doc in docs:
        for item in doc if isinstance(doc, list) else [doc]:
            types.append(machine_type(item))
    if not types:
        raise TypeFileError(f"{path} holds no machine type")
    return types
