"""Consumer lag over the last minutes: a sampler that asks ListConsumers every INTERVAL_S (with
its own in-process read token when tokens are configured) and keeps WINDOW_S of samples per
consumer in memory, and the chart of them as an SVG picture.

The samples are shown only on the consumers page, after the user's own ListConsumers call
succeeded, so a user sees nothing through them that their token could not read anyway.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from html import escape

from statekeeper.v1 import event_pb2
from statekeeper_server.entrypoints.http.api import Api, ApiError

log = logging.getLogger("statekeeper.inspector")

INTERVAL_S = 5.0
WINDOW_S = 600.0
MAX_CONSUMERS = 1000
COLORS = ("#2563eb", "#dc2626", "#16a34a", "#d97706", "#7c3aed", "#0891b2", "#db2777", "#4b5563")


class LagSampler:
    def __init__(self, api: Api, token: str | None) -> None:
        self.api = api
        self.token = token
        self.samples: dict[str, deque[tuple[float, int]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="inspector-lag-sampler")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(ApiError):  # the server not up yet, or shutting down
                await self.sample()
            await asyncio.sleep(INTERVAL_S)

    async def sample(self) -> None:
        now = time.time()
        seen: set[str] = set()
        token = ""
        while len(seen) < MAX_CONSUMERS:
            page = await self.api.call(
                self.api.events.ListConsumers,
                event_pb2.ListConsumersRequest(page_size=1000, page_token=token),
                self.token,
            )
            for c in page.consumers:
                seen.add(c.name)
                series = self.samples.setdefault(c.name, deque())
                series.append((now, c.lag_revisions))
                while series and series[0][0] < now - WINDOW_S:
                    series.popleft()
            token = page.next_page_token
            if not token:
                break
        for name in [n for n in self.samples if n not in seen]:
            del self.samples[name]  # deleted consumers


def chart_svg(samples: dict[str, deque[tuple[float, int]]], names: list[str], now: float) -> str:
    """Lag (revisions) of the named consumers over the last WINDOW_S, as an <svg> element."""
    w, h, left, right, top, bottom = 720, 220, 56, 150, 14, 28
    series = [(n, list(samples.get(n, ()))) for n in names[: len(COLORS)]]
    peak = max((lag for _, points in series for _, lag in points), default=0)
    top_value = max(10, int(peak * 1.15) + 1)
    plot_w, plot_h = w - left - right, h - top - bottom

    def px(t: float) -> float:
        return left + plot_w * (1 - (now - t) / WINDOW_S)

    def py(v: float) -> float:
        return top + plot_h * (1 - v / top_value)

    parts = [
        f'<rect class="plot" x="{left}" y="{top}" width="{plot_w}" height="{plot_h}"/>',
    ]
    for i in range(5):
        v = top_value * i / 4
        y = py(v)
        parts.append(f'<line class="grid" x1="{left}" y1="{y:.1f}" x2="{left + plot_w}" y2="{y:.1f}"/>')
        parts.append(f'<text class="axis" x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{v:,.0f}</text>')
    for minutes in range(0, int(WINDOW_S // 60) + 1, 2):
        x = px(now - minutes * 60)
        label = "now" if minutes == 0 else f"-{minutes} min"
        parts.append(f'<text class="axis" x="{x:.1f}" y="{h - 8}" text-anchor="middle">{label}</text>')
    for i, (name, points) in enumerate(series):
        color = COLORS[i]
        if points:
            coords = " ".join(f"{px(t):.1f},{py(v):.1f}" for t, v in points)
            parts.append(f'<polyline class="series" points="{coords}" stroke="{color}"/>')
            t, v = points[-1]
            parts.append(f'<circle cx="{px(t):.1f}" cy="{py(v):.1f}" r="3" fill="{color}"/>')
        y = top + 8 + i * 18
        shown = name if len(name) <= 16 else name[:15] + "…"
        parts.append(f'<rect x="{w - right + 12}" y="{y - 8}" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text class="legend" x="{w - right + 28}" y="{y + 1}">{escape(shown)}</text>')
    if not any(points for _, points in series):
        parts.append(
            f'<text class="axis" x="{left + plot_w / 2}" y="{top + plot_h / 2}" text-anchor="middle">'
            "no samples yet (one every 5 s)</text>"
        )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" role="img" width="{w}" height="{h}" '
        f'viewBox="0 0 {w} {h}"><title>consumer lag in revisions, last 10 minutes</title>'
        + "".join(parts)
        + "</svg>"
    )
