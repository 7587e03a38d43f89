"""The inspector in a real browser: Debian's Chromium, headless, driven by Playwright, against
real servers filled by the SDK. Screenshots of every page go to test-artifacts/inspector/."""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from tests.inspector.conftest import ARTIFACTS, READ, Inspected
from tests.inspector.seed import EVIL, dead_letter

CHROMIUM = "/usr/bin/chromium"
# Chromium here has no network beyond loopback: no background connections, no sandbox (root).
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_MS = 20_000  # generous: the machine may be busy


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """Module scope: while Playwright's sync API runs, its event loop is the thread's running
    loop, and tests after this module call asyncio.run."""
    assert Path(CHROMIUM).exists(), "Chromium is missing: scripts/test installs Debian's chromium package"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS, headless=True)
        yield b
        b.close()


class Watched:
    """A page whose console errors, script errors and dialogs (an injected alert) are kept."""

    def __init__(self, browser: Browser) -> None:
        self.context = browser.new_context(viewport={"width": 1280, "height": 860})
        self.page: Page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.problems: list[str] = []
        self.page.on("console", self._console)
        self.page.on("pageerror", lambda e: self.problems.append(f"page error: {e}"))
        self.page.on("dialog", lambda d: (self.problems.append(f"dialog: {d.message}"), d.dismiss()))

    def _console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.problems.append(f"console: {message.text}")

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watched(browser: Browser) -> Iterator[Watched]:
    w = Watched(browser)
    yield w
    w.close()


def shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / f"{name}.png"), full_page=True)


def test_every_page_loads_cleanly_and_shows_what_the_sdk_made(inspected: Inspected, watched: Watched) -> None:
    s = inspected.seeded
    with inspected.client() as c:
        dead = dead_letter(c, "browser-dead-shown")
    page = watched.page
    checks = [
        ("server", "/", "#durable-revision", re.compile(r"^\d+$")),
        ("types", "/types", "table.list", "order"),
        ("type-order", "/types/order", "svg.diagram", "shipped"),
        ("trees", "/trees", "h1", "Trees"),
        ("node", f"/node?root={s.root}", "#node-data", '"total": 42'),
        ("node-evil", f"/node?root={s.root}&p={quote('item:' + EVIL)}", "h1", f"{s.root}/item:{EVIL}"),
        ("tree", f"/tree?root={s.root}", "table.tree", "item:i-1"),
        ("history", f"/history?root={s.root}&descendants=1", "#history", "node_transitioned"),
        ("events", "/events?from=1", "#feed tbody", "machine_type_registered"),
        ("tasks", "/tasks", "#timers", s.timer_root),
        ("task", f"/tasks/{dead}", "#task-status", "dead_letter"),
        ("consumers", "/consumers", "#consumers", s.consumer),
        ("runs", f"/runs?root={s.root}", "#runs", s.run),
        ("run", f"/runs/{s.run}", "#savepoints", "120000"),
        ("nodes", "/nodes?type=order&state=paid", "table.list", s.root),
    ]
    for name, path, selector, expected in checks:
        page.goto(inspected.url + path)
        expect(page.locator(selector).first).to_contain_text(expected)
        shot(page, name)
    assert page.goto(inspected.url + "/tasks") is not None
    expect(page.locator("#snapshots, #dead-letters").first).to_contain_text(f"card declined {EVIL}")
    page.goto(inspected.url + f"/runs?root={s.root}")
    expect(page.locator("#snapshots")).to_contain_text("before-ship")
    expect(page.locator("svg.chart")).to_have_count(0)  # no chart markup on this page
    page.goto(inspected.url + "/consumers")
    expect(page.locator("svg.chart")).to_have_count(1)
    assert watched.problems == []


def test_the_live_feed_shows_a_transition_made_after_it_opened(
    inspected: Inspected, watched: Watched
) -> None:
    with inspected.client() as c:
        c.create_root("order", "live-1")
    page = watched.page
    page.goto(inspected.url + "/events?root=live-1")
    expect(page.locator("#feed-status")).to_contain_text("live")
    with inspected.client() as c:
        c.transition("live-1", "pay")
    row = page.locator("#feed tbody tr", has_text="via pay")
    expect(row).to_contain_text("node_transitioned")
    expect(row).to_contain_text("live-1")
    expect(page.locator("#feed tbody tr", has_text="task_created")).to_have_count(1)
    shot(page, "events-live")
    assert watched.problems == []


def test_a_paused_feed_resumes_where_it_stood(inspected: Inspected, watched: Watched) -> None:
    with inspected.client() as c:
        c.create_root("order", "pause-1")
    page = watched.page
    page.goto(inspected.url + "/events?root=pause-1&kind=node_transitioned")
    expect(page.locator("#feed-status")).to_contain_text("live")
    page.click("#feed-toggle")
    expect(page.locator("#feed-status")).to_contain_text("paused")
    with inspected.client() as c:
        c.transition("pause-1", "touch")  # new -> paid, while paused
        c.transition("pause-1", "ship")
    page.wait_for_timeout(1500)
    expect(page.locator("#feed tbody tr")).to_have_count(0)  # paused: nothing shown
    page.click("#feed-toggle")
    rows = page.locator("#feed tbody tr")
    expect(rows).to_have_count(2)
    expect(rows.nth(0)).to_contain_text("via ship")  # newest on top
    expect(rows.nth(1)).to_contain_text("via touch")
    with inspected.client() as c:
        c.create_root("order", "pause-2")  # another tree: filtered out
    page.wait_for_timeout(1500)
    expect(rows).to_have_count(2)
    assert watched.problems == []


def test_a_dead_letter_retried_from_the_page_is_pending_again(inspected: Inspected, watched: Watched) -> None:
    with inspected.client() as c:
        dead = dead_letter(c, "browser-retry")
    page = watched.page
    page.goto(inspected.url + "/tasks")
    page.locator(f"#dead-{dead} button.retry").click()
    expect(page.locator(".flash.ok")).to_contain_text(f"task {dead} is pending again")
    expect(page.locator(f"#dead-{dead}")).to_have_count(0)
    shot(page, "tasks-retried")
    with inspected.client() as c:
        assert c.get_task(dead).status in ("pending", "leased")
    assert watched.problems == []


def test_a_read_token_cannot_retry(secured: Inspected, watched: Watched) -> None:
    with secured.client() as c:
        dead = dead_letter(c, "browser-read-only")
    page = watched.page
    page.goto(secured.url + "/tasks")
    expect(page).to_have_url(re.compile(r"/login\?next="))
    page.fill("input[name=token]", "not-a-token")
    page.click("form.login button")
    expect(page.locator(".flash.error")).to_contain_text("not valid")
    page.fill("input[name=token]", READ)
    page.click("form.login button")
    expect(page).to_have_url(re.compile(r"/tasks$"))
    page.locator(f"#dead-{dead} button.retry").click()
    expect(page.locator(".flash.error")).to_contain_text("PERMISSION_DENIED")
    expect(page.locator(".flash.error")).to_contain_text("needs the write permission")
    expect(page.locator(f"#dead-{dead}")).to_have_count(1)
    shot(page, "tasks-read-token")
    with secured.client() as c:
        assert c.get_task(dead).status == "dead_letter"
    # The login page's own 401 is logged by Chromium as a failed resource load: that one only.
    assert [p for p in watched.problems if "401" not in p] == []


def test_readme_screenshots_come_from_these_pages() -> None:
    """docs/ holds two of the screenshots (copied by hand from test-artifacts/ when the pages
    change); they must exist, as the README shows them."""
    docs = Path(__file__).resolve().parents[2] / "docs"
    for name in ("inspector-type.png", "inspector-node.png"):
        assert (docs / name).stat().st_size > 10_000, name
    assert shutil.which(CHROMIUM) is not None
