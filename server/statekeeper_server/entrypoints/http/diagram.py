"""A machine type's state diagram as an SVG picture, laid out here (no library, no script).

States sit in columns by their distance from the initial state (breadth first over the
transitions); states the initial state cannot reach come last. Transitions going right are
curves between the columns, those within a column bulge to its right, those going back arc
below the states; a transition into its own source is a loop above it. Parallel transitions
share one arrow and list their names. Terminal states have a double border; a dot points at the initial state.
Every text is escaped: names are validated by the server, but the picture does not rely on it.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from html import escape

from statekeeper.v1 import machine_type_pb2

BOX_H = 36
ROW_GAP = 34
COL_GAP = 120
CHAR_W = 7.4  # average glyph width of the 13 px sans-serif font used below
LABEL_CHAR_W = 6.4  # 11 px labels
MARGIN = 24
DOT_SPACE = 46


@dataclass
class _Box:
    name: str
    col: int
    x: float = 0.0
    y: float = 0.0
    w: float = 0.0

    @property
    def cx(self) -> float:
        return self.x + self.w / 2

    @property
    def cy(self) -> float:
        return self.y + BOX_H / 2


def _columns(mt: machine_type_pb2.MachineType) -> dict[str, int]:
    successors: dict[str, list[str]] = defaultdict(list)
    for t in mt.transitions:
        for s in t.sources:
            successors[s].append(t.destination)
    col = {mt.initial_state: 0} if mt.initial_state else {}
    frontier = list(col)
    while frontier:
        nxt = []
        for s in frontier:
            for d in successors[s]:
                if d not in col:
                    col[d] = col[s] + 1
                    nxt.append(d)
        frontier = nxt
    last = max(col.values(), default=-1) + 1
    for s in mt.states:
        col.setdefault(s, last)
    return col


def _label(names: list[str], tasks: list[str]) -> str:
    text = ", ".join(names)
    if tasks:
        text += " [" + ", ".join(tasks) + "]"
    return text


def _task_marks(t: machine_type_pb2.TransitionDefinition) -> list[str]:
    marks = []
    for k in t.tasks:
        if k.WhichOneof("kind") == "outbound":
            marks.append(f"→{k.outbound.destination}")
        else:
            marks.append(f"⏱{k.name}")
    return marks


def render_svg(mt: machine_type_pb2.MachineType) -> str:
    """The diagram as an <svg> element (a string of escaped markup)."""
    cols = _columns(mt)
    boxes = {s: _Box(s, cols[s], w=max(70.0, len(s) * CHAR_W + 26)) for s in mt.states}
    by_col: dict[int, list[_Box]] = defaultdict(list)
    for s in mt.states:
        by_col[cols[s]].append(boxes[s])
    rows = max((len(v) for v in by_col.values()), default=1)
    x: float = MARGIN + DOT_SPACE
    loop_room = 44  # above the first row, for self-loops and their labels
    for c in sorted(by_col):
        column = by_col[c]
        width = max(b.w for b in column)
        offset = (rows - len(column)) * (BOX_H + ROW_GAP) / 2
        for i, b in enumerate(column):
            b.x = x + (width - b.w) / 2
            b.y = MARGIN + loop_room + offset + i * (BOX_H + ROW_GAP)
        x += width + COL_GAP
    width = x - COL_GAP + MARGIN
    bottom = MARGIN + loop_room + rows * (BOX_H + ROW_GAP) - ROW_GAP

    edges: dict[tuple[str, str], tuple[list[str], list[str]]] = {}
    for t in mt.transitions:
        for s in t.sources:
            if s in boxes and t.destination in boxes:
                names, marks = edges.setdefault((s, t.destination), ([], []))
                names.append(t.name)
                marks.extend(m for m in _task_marks(t) if m not in marks)

    parts: list[str] = []
    back = 0
    for (s, d), (names, marks) in edges.items():
        a, b = boxes[s], boxes[d]
        label = escape(_label(names, marks))
        if s == d:
            top = a.y
            path = f"M{a.cx - 12:.1f},{top:.1f} C{a.cx - 34:.1f},{top - 38:.1f} {a.cx + 34:.1f},{top - 38:.1f} {a.cx + 12:.1f},{top:.1f}"
            lx, ly = a.cx, top - 32
        elif b.col > a.col:
            x1, y1, x2, y2 = a.x + a.w, a.cy, b.x, b.cy
            dx = (x2 - x1) / 2
            path = f"M{x1:.1f},{y1:.1f} C{x1 + dx:.1f},{y1:.1f} {x2 - dx:.1f},{y2:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 2 - 6
        elif b.col == a.col:
            # Within a column: a bulge to the right of the two states.
            x1, x2 = a.x + a.w, b.x + b.w
            bulge = max(x1, x2) + 36 + abs(a.cy - b.cy) / 6
            path = f"M{x1:.1f},{a.cy:.1f} C{bulge:.1f},{a.cy:.1f} {bulge:.1f},{b.cy:.1f} {x2:.1f},{b.cy:.1f}"
            lx, ly = (x1 + x2) / 8 + bulge * 3 / 4 + len(label) * LABEL_CHAR_W / 2 + 4, (a.cy + b.cy) / 2 + 4
        else:
            back += 1
            depth = bottom + 22 + back * 20
            x1, x2 = a.cx + 8, b.cx - 8
            y1, y2 = a.y + BOX_H, b.y + BOX_H
            path = f"M{x1:.1f},{y1:.1f} C{x1:.1f},{depth:.1f} {x2:.1f},{depth:.1f} {x2:.1f},{y2:.1f}"
            lx, ly = (x1 + x2) / 2, (y1 + y2) / 8 + depth * 3 / 4 + 4
        parts.append(f'<path class="edge" d="{path}" marker-end="url(#arrow)"/>')
        half = len(_label(names, marks)) * LABEL_CHAR_W / 2
        parts.append(
            f'<rect class="label-bg" x="{lx - half - 2:.1f}" y="{ly - 10:.1f}" '
            f'width="{2 * half + 4:.1f}" height="13" rx="2"/>'
        )
        parts.append(f'<text class="label" x="{lx:.1f}" y="{ly:.1f}" text-anchor="middle">{label}</text>')
        width = max(width, lx + half + MARGIN)
    height = bottom + MARGIN + (22 + back * 20 + 12 if back else 0)

    terminal = set(mt.terminal_states)
    for box in boxes.values():
        cls = "state terminal" if box.name in terminal else "state"
        if box.name == mt.initial_state:
            cls += " initial"
        parts.append(
            f'<rect class="{cls}" x="{box.x:.1f}" y="{box.y:.1f}" width="{box.w:.1f}" height="{BOX_H}" rx="8"/>'
        )
        if box.name in terminal:
            parts.append(
                f'<rect class="state-inner" x="{box.x + 3:.1f}" y="{box.y + 3:.1f}" '
                f'width="{box.w - 6:.1f}" height="{BOX_H - 6}" rx="6"/>'
            )
        parts.append(
            f'<text class="state-name" x="{box.cx:.1f}" y="{box.cy + 4.5:.1f}" text-anchor="middle">'
            f"{escape(box.name)}</text>"
        )
    if mt.initial_state in boxes:
        b = boxes[mt.initial_state]
        parts.append(f'<circle class="start" cx="{MARGIN + 6}" cy="{b.cy:.1f}" r="6"/>')
        parts.append(
            f'<path class="edge" d="M{MARGIN + 12},{b.cy:.1f} L{b.x:.1f},{b.cy:.1f}" marker-end="url(#arrow)"/>'
        )
    title = escape(f"state diagram of {mt.name} version {mt.version}")
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="diagram" role="img" '
        f'width="{width:.0f}" height="{height:.0f}" viewBox="0 0 {width:.0f} {height:.0f}">'
        f"<title>{title}</title>"
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="8" '
        'markerHeight="8" orient="auto-start-reverse"><path d="M0,0 L10,5 L0,10 z" class="arrow"/>'
        "</marker></defs>" + "".join(parts) + "</svg>"
    )
