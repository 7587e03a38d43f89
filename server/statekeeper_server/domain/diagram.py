"""Render a machine type as a diagram: Mermaid stateDiagram-v2 or Graphviz DOT."""

from __future__ import annotations

import json

from statekeeper_server.domain.model import MachineType, TaskKind


def _task_note(mt: MachineType, name: str) -> str:
    t = mt.transition(name)
    if t is None or not t.tasks:
        return ""
    parts = []
    for k in t.tasks:
        parts.append(f"timer→{k.timer_transition}" if k.kind is TaskKind.TIMER else f"→{k.destination}")
    return " [" + ", ".join(parts) + "]"


def mermaid(mt: MachineType) -> str:
    lines = ["stateDiagram-v2", f"    %% {mt.name} v{mt.version}", f"    [*] --> {mt.initial_state}"]
    for t in mt.transitions:
        for s in t.sources:
            lines.append(f"    {s} --> {t.destination}: {t.name}{_task_note(mt, t.name)}")
    lines.extend(f"    {s} --> [*]" for s in mt.terminal_states)
    return "\n".join(lines) + "\n"


def dot(mt: MachineType) -> str:
    q = json.dumps  # DOT string quoting is compatible with JSON's for our names
    lines = [
        f"digraph {q(f'{mt.name} v{mt.version}')} {{",
        "    rankdir=LR;",
        '    __start [shape=point, label=""];',
    ]
    for s in mt.states:
        shape = "doublecircle" if mt.is_terminal(s) else "circle"
        lines.append(f"    {q(s)} [shape={shape}];")
    lines.append(f"    __start -> {q(mt.initial_state)};")
    for t in mt.transitions:
        for s in t.sources:
            lines.append(f"    {q(s)} -> {q(t.destination)} [label={q(t.name + _task_note(mt, t.name))}];")
    lines.append("}")
    return "\n".join(lines) + "\n"
