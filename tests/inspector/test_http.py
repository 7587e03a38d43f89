"""The inspector over plain HTTP against real servers: escaping of user input, login and
permissions, CSRF, pagination, /metrics, TLS."""

from __future__ import annotations

import datetime
import ipaddress
import itertools
import json
import re
import ssl
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

import statekeeper as sk
from tests.inspector.conftest import ADMIN, READ, WRITE, Inspected, start
from tests.inspector.seed import EVIL, dead_letter
from tests.inspector.web_client import Http

ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"


def pages(i: Inspected, dead: str) -> list[str]:
    s = i.seeded
    evil = quote(f"item:{EVIL}")
    return [
        "/",
        "/types",
        "/types/order",
        "/trees",
        f"/node?root={s.root}",
        f"/node?root={s.root}&p={evil}",
        f"/tree?root={s.root}",
        f"/history?root={s.root}&descendants=1",
        f"/history?root={s.root}&p={evil}",
        f"/events?root={s.root}",
        "/tasks",
        f"/tasks/{dead}",
        "/tasks/queue/payments",
        "/consumers",
        "/runs",
        f"/runs/{s.run}",
        f"/runs?root={s.root}",
        "/nodes?type=item",
    ]


def test_every_page_shows_markup_in_ids_and_data_as_text(inspected: Inspected) -> None:
    with inspected.client() as c:
        dead = dead_letter(c, "escape-dead")
    http = Http(inspected.url)
    shown = 0
    for path in pages(inspected, dead):
        reply = http.get(path)
        assert reply.status == 200, (path, reply.text[:500])
        assert "<script>alert" not in reply.text, path
        shown += ESCAPED in reply.text or "&lt;script&gt;" in reply.text
        csp = reply.headers["Content-Security-Policy"]
        assert "script-src 'self'" in csp and "'unsafe-inline'" not in csp
        assert reply.headers["X-Content-Type-Options"] == "nosniff"
    # The node and its parent, both histories, the tree walk, the dead letter's error, the
    # item list and the task page carry the markup.
    assert shown >= 8
    node = http.get(f"/node?root={inspected.seeded.root}").text
    assert "&#34;note&#34;: &#34;" + ESCAPED in node or '"note": "' + ESCAPED in node


def test_node_data_is_shown_as_json_text_or_hex(inspected: Inspected) -> None:
    http = Http(inspected.url)
    s = inspected.seeded
    root = http.get(f"/node?root={s.root}").text
    assert "shown as json" in root and "&#34;total&#34;: 42" in root
    text = http.get(f"/node?root={s.root}&p=item:i-1").text
    assert "shown as text" in text and "plain text item" in text
    binary = http.get(f"/node?root={s.root}&p={quote('item:' + EVIL)}").text
    assert "shown as hex" in binary and "00000000  00 01 02 03" in binary


def test_missing_things_are_404_pages(inspected: Inspected) -> None:
    http = Http(inspected.url)
    reply = http.get("/node?root=no-such-root")
    assert reply.status == 404 and "NOT_FOUND" in reply.text
    assert http.get("/trees?root=no-such-root").status == 404
    assert http.get("/types/nosuchtype").status == 404
    reply = http.get("/history?root=x&page_token=not*a*token")
    assert reply.status == 400 and "INVALID_PAGE_TOKEN" in reply.text


def test_session_cookie_is_httponly_and_strict(inspected: Inspected) -> None:
    cookie = Http(inspected.url).get("/").headers["Set-Cookie"]
    assert "sk_session=" in cookie and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; the TLS test checks Secure


def test_children_page_through_a_large_collection(inspected: Inspected) -> None:
    with inspected.client() as c:
        root = c.create_root("order", "many-children")
        batch = sk.Batch()
        for n in range(120):
            batch.add_child(root, "item", f"c{n:03d}")
        c.execute(batch)
    http = Http(inspected.url)
    seen: list[str] = []
    path = "/node?root=many-children"
    for _ in range(5):
        text = http.get(path).text
        seen += re.findall(r"many-children/item:(c\d{3})</a>", text)
        nxt = re.search(r'href="(/node\?[^"]*page_token=[^"]+)"[^>]*rel="next"', text)
        if nxt is None:
            break
        path = nxt.group(1).replace("&amp;", "&")
    assert seen == [f"c{n:03d}" for n in range(120)]  # 50 + 50 + 20, each once, in id order


def test_history_pages_go_back_in_time_without_gaps(inspected: Inspected) -> None:
    with inspected.client() as c:
        c.create_root("order", "busy")
        for _ in range(70):
            c.transition("busy", "touch")
        watch = c.watch(start_revision=1, root_id="busy")
        full = list(itertools.islice(watch, 71))  # created, then 70 transitions
        watch.close()
    expected = sorted(((e.revision, e.index) for e in full), reverse=True)
    http = Http(inspected.url)
    seen: list[tuple[int, int]] = []
    path = "/history?root=busy"
    for _ in range(10):
        text = http.get(path).text
        seen += [(int(r), int(i)) for r, i in re.findall(r'<td class="num">(\d+)\.(\d+)</td>', text)]
        nxt = re.search(r'href="\?([^"]*page_token=[^"]+)"[^>]*rel="next"', text)
        if nxt is None:
            break
        path = "/history?" + nxt.group(1).replace("&amp;", "&")
    assert seen == expected  # newest first, every event of the node once


def test_login_then_the_token_decides(secured: Inspected) -> None:
    http = Http(secured.url)
    reply = http.get("/tasks")
    assert reply.status == 303 and reply.location.startswith("/login?next=%2Ftasks")
    assert http.get("/events/stream").status == 401
    # The login form itself needs its CSRF field.
    assert http.post("/login", {"token": READ}).status == 403
    bad = http.post("/login", {"csrf": http.csrf(), "token": "wrong"})
    assert bad.status == 401 and "not valid" in bad.text
    ok = http.login(READ)
    assert ok.status == 303 and ok.location == "/"
    assert http.get("/tasks").status == 200
    # Logging out ends the session: pages ask for a token again.
    assert http.post("/logout", {"csrf": http.csrf("/")}).status == 303
    assert http.get("/").status == 303


def test_a_read_token_sees_but_cannot_retry(secured: Inspected) -> None:
    with secured.client() as c:
        dead = dead_letter(c, "read-cannot-retry")
    http = Http(secured.url)
    http.login(READ)
    assert dead in http.get("/tasks").text
    reply = http.post(f"/tasks/{dead}/retry", {"csrf": http.csrf("/tasks"), "back": "/tasks"})
    assert reply.status == 303
    page = http.get("/tasks").text
    assert f"could not retry task {dead}: PERMISSION_DENIED INSUFFICIENT_PERMISSION" in page
    with secured.client() as c:
        assert c.get_task(dead).status == "dead_letter"


def test_a_write_token_retries_and_discards(secured: Inspected) -> None:
    with secured.client() as c:
        retried, discarded = dead_letter(c, "write-retries"), dead_letter(c, "write-discards")
    http = Http(secured.url)
    http.login(WRITE)
    csrf = http.csrf("/tasks")
    assert http.post(f"/tasks/{retried}/retry", {"csrf": csrf}).status == 303
    assert f"task {retried} is pending again" in http.get("/tasks").text
    assert http.post(f"/tasks/{discarded}/discard", {"csrf": csrf}).status == 303
    with secured.client() as c:
        assert c.get_task(retried).status in ("pending", "leased")
        assert c.get_task(discarded).status == "discarded"


def test_buttons_need_the_csrf_field_and_this_origin(secured: Inspected) -> None:
    with secured.client() as c:
        dead = dead_letter(c, "csrf-refused")
    http = Http(secured.url)
    http.login(ADMIN)
    assert http.post(f"/tasks/{dead}/retry", {}).status == 403
    assert http.post(f"/tasks/{dead}/retry", {"csrf": "forged"}).status == 403
    csrf = http.csrf("/tasks")
    other = http.post(f"/tasks/{dead}/retry", {"csrf": csrf}, {"Origin": "http://evil.example"})
    assert other.status == 403
    # Another browser's session has its own secret.
    stranger = Http(secured.url)
    stranger.login(ADMIN)
    assert stranger.post(f"/tasks/{dead}/retry", {"csrf": csrf}).status == 403
    with secured.client() as c:
        assert c.get_task(dead).status == "dead_letter"


def test_metrics_on_the_inspector_listener(inspected: Inspected, secured: Inspected) -> None:
    reply = Http(inspected.url).get("/metrics")
    assert reply.status == 200 and "statekeeper_revision " in reply.text
    assert "statekeeper_rpc_handled_total" in reply.text
    assert Http(secured.url).get("/metrics").status == 401
    assert Http(secured.url).get("/metrics", {"Authorization": "Bearer wrong"}).status == 401
    reply = Http(secured.url).get("/metrics", {"Authorization": f"Bearer {READ}"})
    assert reply.status == 200 and "statekeeper_revision " in reply.text


def test_metrics_listen_keeps_working_beside_the_inspector(tmp_path: Path) -> None:
    proc, ready = start(tmp_path, "--metrics-listen", "127.0.0.1:0")
    try:
        assert "statekeeper_revision " in Http("http://" + ready["metrics_address"]).get("/metrics").text
        assert "statekeeper_revision " in Http("http://" + ready["http_address"]).get("/metrics").text
    finally:
        proc.terminate()


def _self_signed(folder: Path) -> tuple[Path, Path]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.IPv4Address("127.0.0.1"))]), False
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = folder / "server.pem", folder / "server.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_file, key_file


def test_tls_serves_https_with_the_same_certificate(tmp_path: Path) -> None:
    cert, key = _self_signed(tmp_path)
    proc, ready = start(tmp_path, "--tls-cert-file", str(cert), "--tls-key-file", str(key))
    try:
        context = ssl.create_default_context(cafile=str(cert))
        http = Http("https://" + ready["http_address"], context)
        reply = http.get("/")
        assert reply.status == 200 and "durable revision" in reply.text
        assert "Secure" in reply.headers["Set-Cookie"]
        peer = ssl.get_server_certificate(tuple(ready["http_address"].rsplit(":", 1)))  # type: ignore[arg-type]
        assert x509.load_pem_x509_certificate(peer.encode()) == x509.load_pem_x509_certificate(
            cert.read_bytes()
        )
        with pytest.raises(Exception):  # noqa: B017  plain HTTP gets no page from a TLS listener
            Http("http://" + ready["http_address"]).get("/")
        info = json.loads((tmp_path / "data.ready").read_text())
        assert info["http_address"] == ready["http_address"]
    finally:
        proc.terminate()


@pytest.mark.parametrize("which", ["inspected", "secured"])
def test_the_lag_chart_fills_with_samples(which: str, request: pytest.FixtureRequest) -> None:
    """The sampler asks ListConsumers every 5 s (with its own read token when tokens are on)."""
    i: Inspected = request.getfixturevalue(which)
    http = Http(i.url)
    if i.token:
        http.login(READ)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        text = http.get("/consumers?fragment=1").text
        assert i.seeded.consumer in text
        if 'class="series"' in text:
            return
        time.sleep(1)
    raise AssertionError("no lag samples after 60 s")


def _first_events(url: str, headers: dict[str, str]) -> dict[str, Any]:
    """The first `events` message of a live feed stream."""
    req = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.headers["Content-Type"].startswith("text/event-stream")
        kind = ""
        for raw in r:
            line = raw.decode().rstrip("\n")
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: ") and kind == "events":
                data: dict[str, Any] = json.loads(line[6:])
                return data
    raise AssertionError("the stream ended without events")


def test_the_feed_stream_resumes_after_the_last_event_id(inspected: Inspected) -> None:
    with inspected.client() as c:
        c.create_root("order", "resume-1")
        paid = c.transition("resume-1", "pay").revision
        c.transition("resume-1", "ship")
    url = inspected.url + "/events/stream?root=resume-1&kind=node_transitioned"
    # EventSource sends back the id of the last message it saw: the stream goes on after it.
    data = _first_events(url, {"Last-Event-ID": str(paid)})
    assert [e["transition"] for e in data["events"]] == ["ship"]
    data = _first_events(url + "&from=1", {})
    assert [e["transition"] for e in data["events"]] == ["pay", "ship"]
    assert data["events"][0]["node"] == "resume-1" and data["progress"] >= paid + 1


def test_a_closed_feed_ends_its_watch(tmp_path: Path) -> None:
    proc, ready = start(tmp_path)
    try:
        http = Http("http://" + ready["http_address"])

        def subscribers() -> float:
            found = re.search(r"^statekeeper_subscribers (\S+)$", http.get("/metrics").text, re.M)
            assert found
            return float(found.group(1))

        def wait_for(value: float) -> None:
            deadline = time.monotonic() + 30
            while subscribers() != value:
                assert time.monotonic() < deadline, f"subscribers stayed at {subscribers()}, not {value}"
                time.sleep(0.1)

        wait_for(0)
        stream = urllib.request.urlopen("http://" + ready["http_address"] + "/events/stream", timeout=30)
        stream.readline()
        wait_for(1)  # the feed holds one Watch stream on the server
        stream.close()
        wait_for(0)  # and ends it when the browser goes (noticed at the next progress notice)
    finally:
        proc.terminate()
